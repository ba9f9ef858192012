//! What a start found under the pin folder, so that a failed start removes what it made and
//! only that; and the pinned maps' fill, for `enforcer status`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{Attachment, Datapath, PinnedMaps, Result, detach_attachment, names, read_phys};
use crate::state::PhysState;
use enforcer_common::tier;

/// The pin folder as a start found it.
#[derive(Clone, Debug, Default)]
pub struct PinSnapshot {
    bpffs: PathBuf,
    folder: bool,
    links_folder: bool,
    files: BTreeSet<PathBuf>,
}

impl PinSnapshot {
    pub fn take(bpffs: &Path) -> Self {
        let mut files = BTreeSet::new();
        for n in names::ALL_MAPS {
            let p = bpffs.join(n);
            if p.exists() {
                files.insert(p);
            }
        }
        if let Ok(entries) = std::fs::read_dir(bpffs.join("links")) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
        PinSnapshot {
            bpffs: bpffs.to_path_buf(),
            folder: bpffs.exists(),
            links_folder: bpffs.join("links").exists(),
            files,
        }
    }

    /// An earlier agent left pins here (a takeover).
    pub fn takeover(&self) -> bool {
        !self.files.is_empty()
    }

    /// Removes the pins (maps and links) and folders made since the snapshot.
    pub fn remove_new(&self) {
        for n in names::ALL_MAPS {
            let p = self.bpffs.join(n);
            if !self.files.contains(&p) {
                let _ = std::fs::remove_file(&p);
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.bpffs.join("links")) {
            for e in entries.flatten() {
                if !self.files.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if !self.links_folder {
            let _ = std::fs::remove_dir(self.bpffs.join("links"));
        }
        if !self.folder {
            let _ = std::fs::remove_dir(&self.bpffs);
        }
    }

    fn had_link(&self, ifindex: u32) -> bool {
        let prefix = format!("{ifindex}-");
        self.files.iter().any(|f| {
            f.parent() == Some(&self.bpffs.join("links"))
                && f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
    }
}

impl Datapath {
    /// Undoes a start that failed: detaches the programs from interfaces this process attached
    /// first, removes the pins it created, and leaves what `before` found (an earlier agent's
    /// pins and links, which keep enforcing, for the next agent to take over).
    pub fn abandon(mut self, before: &PinSnapshot) {
        let mut attached = std::mem::take(&mut self.attached);
        attached.extend(std::mem::take(&mut self.host_attached));
        for (ifindex, links) in attached {
            let keep = before.had_link(ifindex);
            for a in links {
                match a {
                    // The earlier agent's link, now running our program on its maps.
                    Attachment::Tcx(p) if keep => drop(p),
                    a => detach_attachment(a),
                }
            }
        }
        drop(self);
        before.remove_new();
    }
}

/// One pinned map's fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub entries: usize,
    pub capacity: u32,
}

impl PinnedMaps {
    /// Both generations, as the maps hold them.
    pub fn read_phys(&self) -> Result<PhysState> {
        read_phys(|n| self.map(n))
    }

    /// Every conntrack entry, with the table it is in (`lru` or `established`).
    pub fn conntrack_entries(
        &self,
    ) -> Result<
        Vec<(
            enforcer_common::CtKey,
            enforcer_common::CtValue,
            &'static str,
        )>,
    > {
        let t = super::ct::CtTables::open(|n| self.map(n))?;
        let mut out = Vec::new();
        for (table, name) in [
            (super::ct::Table::Lru, "lru"),
            (super::ct::Table::Established, "established"),
        ] {
            out.extend(t.entries(table)?.into_iter().map(|(k, v)| (k, v, name)));
        }
        Ok(out)
    }

    /// The entries each map of the policy state holds against its capacity (the kernel's word
    /// for the pinned map: a map keeps the size it was created with).
    pub fn usage(&self, bpffs: &Path) -> Result<BTreeMap<&'static str, Usage>> {
        let p = self.read_phys()?;
        let ct = self.conntrack()?;
        let cap = |n: &'static str, dflt: u32| {
            aya::maps::MapInfo::from_pin(bpffs.join(n))
                .map(|i| i.max_entries())
                .unwrap_or(dflt)
        };
        use enforcer_common::capacity as c;
        let mut out = BTreeMap::new();
        let mut put = |n: &'static str, entries: usize, dflt: u32| {
            out.insert(
                n,
                Usage {
                    entries,
                    capacity: cap(n, dflt),
                },
            );
        };
        put(names::MAP_ENDPOINTS, p.endpoints.len(), c::ENDPOINTS);
        put(names::MAP_IP_IDENTITY, p.ip_identity.len(), c::IP_IDENTITY);
        put(
            names::MAP_CIDR_IDENTITY,
            p.cidr_identity.len(),
            c::CIDR_IDENTITY,
        );
        let tiered = p
            .policy
            .keys()
            .filter(|k| tier::ordered(k.data.tier))
            .count();
        put(names::MAP_POLICY, p.policy.len() - tiered, c::POLICY);
        put(names::MAP_POLICY_TIERS, tiered, c::POLICY_TIERS);
        put(names::MAP_SERVICE_IPS, p.service_ips.len(), c::SERVICE_IPS);
        put(
            names::MAP_SERVICE_BACKENDS,
            p.service_backends.len(),
            c::SERVICE_BACKENDS,
        );
        put(names::MAP_CONNTRACK, ct.lru_entries, c::CONNTRACK);
        put(
            names::MAP_CT_ESTABLISHED,
            ct.established_entries,
            c::CT_ESTABLISHED,
        );
        Ok(out)
    }
}
