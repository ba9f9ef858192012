//! Kernel edge (owned by the datapath work).
