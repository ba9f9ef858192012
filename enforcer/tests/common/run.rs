//! A lab built in-process (not through the CLI), for tests that act on it while it runs:
//! API writes, agent restarts, traffic of their own.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use enforcer_lab::agent::Agent;
use enforcer_lab::lab::{self, Lab, Resources, Source};
use enforcer_lab::netns::Netns;
use enforcer_lab::plan::{Ep, Plan};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_enforcer");

/// A lab built in-process, torn down on drop (also when a test fails).
pub struct Run {
    pub rt: Option<tokio::runtime::Runtime>,
    pub res: Resources,
    pub lab: Option<Lab>,
    pub plan: Plan,
    pub opts: lab::Options,
}

impl Run {
    pub fn start(scenario: &str, source: Source) -> Run {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the kube lab tests need root"
        );
        let prefix = enforcer_lab::runs::new_prefix();
        let plan = enforcer_lab::load(scenario, "test scenario", &prefix).expect("scenario");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let opts = lab::Options {
            source,
            ..lab::Options::default()
        };
        let mut run = Run {
            rt: None,
            res: Resources::new(&plan.prefix),
            lab: None,
            plan,
            opts,
        };
        let meta = enforcer_lab::runs::Meta::for_run(None, &run.plan, "run");
        let lab = rt
            .block_on(lab::build(
                &run.plan,
                std::path::Path::new(EXE),
                &run.opts,
                &mut run.res,
                &meta,
            ))
            .map_err(|e| format!("{e:#}"));
        run.rt = Some(rt);
        run.lab = Some(lab.expect("building the lab"));
        run
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().unwrap()
    }

    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.as_ref().unwrap().block_on(f)
    }

    pub fn pod(&self, name: &str) -> Ep {
        Ep::Pod(self.plan.find_pod("x", name).expect("pod in scenario"))
    }

    pub fn ns(&self, name: &str) -> Netns {
        self.lab().netns_of(&self.pod(name)).unwrap().clone()
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        self.plan.ips_of(self.pod(name))[0]
    }

    /// Writes an object through the lab's API server, as admin.
    pub fn apply(&mut self, obj: &Value) {
        let api = self.lab.as_mut().unwrap().api_mut().expect("kube source");
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(api.apply(obj))
            .unwrap_or_else(|e| panic!("API write: {e:#}"));
    }

    pub fn delete(&mut self, obj: &Value) {
        let api = self.lab.as_mut().unwrap().api_mut().expect("kube source");
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(api.delete(obj))
            .unwrap_or_else(|e| panic!("API delete: {e:#}"));
    }

    pub fn node_index(&self, node: &str) -> usize {
        self.plan.nodes.iter().position(|n| n.name == node).unwrap()
    }

    /// Kills a node's agent (SIGKILL: pins and links stay, enforcing) or stops it (SIGTERM).
    pub fn kill_agent(&mut self, node: &str, signal: i32) {
        let i = self.node_index(node);
        let a = &mut self.res.agents[i];
        let pid = a.pid().expect("agent running") as i32;
        unsafe { libc::kill(pid, signal) };
        let start = Instant::now();
        while a.exited().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent did not exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a node's agent again, as the lab did, and waits until it has the current state.
    pub fn restart_agent(&mut self, node: &str, extra: &[&str]) -> Duration {
        let i = self.node_index(node);
        let lab = self.lab.as_ref().unwrap();
        let dir = lab.dir.join(node);
        let bpffs = enforcer_lab::runs::bpffs_dir(&self.plan.prefix).join(node);
        let ns = Netns::open(&self.plan.nodes[i].netns).unwrap();
        let started = Instant::now();
        let agent = Agent::spawn_with(
            std::path::Path::new(EXE),
            node,
            &ns,
            &lab.agent_source(),
            &bpffs,
            &dir,
            extra,
        )
        .expect("restarting the agent");
        self.res.agents[i] = agent;
        // Everything written so far, the test's own writes included.
        let mark = lab.api().map_or(lab.mark.clone(), |api| api.mark().clone());
        let rt = self.rt.as_ref().unwrap();
        rt.block_on(self.res.agents[i].wait_generation(&mark, Duration::from_secs(20)))
            .expect("restarted agent ready");
        started.elapsed()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        drop(self.lab.take());
        if let Some(rt) = self.rt.take() {
            enforcer_lab::shutdown(rt, &mut self.res);
        }
    }
}
