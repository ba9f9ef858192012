//! Adversarial tests: fail-closed behaviour: held interfaces, full maps, restarts.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.

#[path = "../../enforcer/tests/common/packets.rs"]
mod packets;

use std::path::PathBuf;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use enforcer_common::{Config, EndpointSlot, EndpointValue, mode, reason, verdict};
use packets::*;

const IN: Prog = Prog::ToEndpoint;

/// A bpffs instance of our own, mounted on a throwaway folder (the machine's /sys/fs/bpf may
/// not be mounted, and nothing here should depend on it); unmounted and removed on drop.
struct Bpffs {
    mount: PathBuf,
}

impl Bpffs {
    fn new(tag: &str) -> Bpffs {
        require_root();
        let mount =
            std::env::temp_dir().join(format!("enf-failclosed-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("creating the mount point");
        let b = Bpffs { mount };
        let ok = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&b.mount)
            .status()
            .expect("running mount");
        assert!(ok.success(), "mounting bpffs on {}", b.mount.display());
        b
    }
    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// A pinned datapath under a throwaway bpffs, removed on drop (also on failure).
struct Pinned {
    dp: Option<Datapath>,
    bpffs: PathBuf,
    _fs: Bpffs,
}

impl Pinned {
    fn new(tag: &str) -> Pinned {
        let fs = Bpffs::new(tag);
        let bpffs = fs.path("enforcer");
        let dp = Datapath::load(&bpffs).expect("loading the datapath pinned");
        Pinned {
            dp: Some(dp),
            bpffs,
            _fs: fs,
        }
    }
    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("datapath")
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.cleanup(false);
        }
        let _ = enforcer::bpf::remove_pins(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

/// The agent flips from one generation to the next by writing `CONFIG` whole; the kernel copies
/// the value in without atomicity, so a packet racing the flip could read the new revision next
/// to the old generation, judge its flow by the old policy and stamp it with the new revision
/// (never re-checked again). The revision alone must name the generation: a packet that reads
/// the new revision is judged by the new generation, whatever else the value holds.
#[test]
fn a_torn_config_read_is_impossible() {
    let mut p = Pinned::new("torn");
    // The endpoint as the agent prepares a flip: generation 0 holds the old state (held
    // closed), generation 1 the new one (open).
    let slot = |m| EndpointSlot {
        policy_set: 0,
        ingress_mode: m,
        egress_mode: m,
    };
    let data = MapData::from_pin(p.bpffs.join("ENDPOINTS")).expect("the pinned ENDPOINTS");
    let mut endpoints: BpfHashMap<MapData, u32, EndpointValue> =
        BpfHashMap::try_from(Map::HashMap(data)).expect("a hash map");
    endpoints
        .insert(
            IFINDEX,
            EndpointValue {
                endpoint_id: EP_ID,
                slots: [slot(mode::DENY_ALL), slot(mode::ALLOW_ALL)],
            },
            0,
        )
        .expect("writing the endpoint");

    // Revision 2: generation 0, the old state.
    let old = Config {
        revision: 2,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(old).unwrap();
    let pkt = |sport| ipv4(PEER_A, POD, TCP, &tcp(sport, 80));
    assert_eq!(
        p.dp().test_run(IN, &pkt(40000), 1).unwrap().verdict,
        TC_DROP,
        "revision 2 is generation 0 (held)"
    );
    let ev = p.dp().drain_events();
    assert!(
        ev.iter()
            .any(|e| e.verdict == verdict::DROP && e.reason == reason::ENDPOINT_DENY_ALL),
        "{ev:?}"
    );

    // What a torn read sees: the next revision, with every other field of the old value.
    let torn = Config {
        revision: 3,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(torn).unwrap();
    assert_eq!(
        p.dp().test_run(IN, &pkt(40001), 1).unwrap().verdict,
        TC_PASS,
        "revision 3 is judged by generation 1, never by the old generation"
    );
    assert_eq!(p.dp().config().unwrap().revision, 3);
    // The admitted flow carries revision 3 and was judged by generation 1: the pair agrees.
    let ct = p.dp().conntrack().unwrap();
    assert!(
        ct.iter()
            .any(|(k, v)| u16::from_be(k.sport_be) == 40001 && v.revision == 3),
        "{ct:?}"
    );

    // And back: revision 4 is generation 0 again.
    let next = Config {
        revision: 4,
        ..p.dp().config().unwrap()
    };
    p.dp().set_config(next).unwrap();
    assert_eq!(
        p.dp().test_run(IN, &pkt(40002), 1).unwrap().verdict,
        TC_DROP
    );
}
