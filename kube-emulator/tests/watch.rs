//! Watches over raw HTTP: ordering, bookmarks, timeouts, 410 after compaction, dropped
//! connections, sendInitialEvents and selector transitions.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube_emulator::Emulator;
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/a/pods";
const NPS: &str = "/apis/networking.k8s.io/v1/networkpolicies";

fn s(t: &str, n: &str) -> (String, String) {
    (t.to_string(), n.to_string())
}

#[test]
fn events_after_the_resource_version_in_order() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.create(pod("a", "old", json!({}))).unwrap();
        let from = emu.resource_version();
        emu.create(pod("a", "p1", json!({}))).unwrap();
        emu.apply(pod("a", "p1", json!({"v": "2"})));
        emu.create(policy("a", "not-a-pod")).unwrap();
        emu.create(pod("a", "p2", json!({}))).unwrap();
        emu.delete("Pod", Some("a"), "p1").unwrap();

        let mut w = Watch::open(
            addr,
            &format!("{PODS}?watch=true&resourceVersion={from}&timeoutSeconds=30"),
        )
        .await;
        assert_eq!(w.status, 200);
        assert_eq!(w.content_type, "application/json");
        let mut got = Vec::new();
        let mut last = from;
        for _ in 0..4 {
            let e = w.next_change().await;
            let r = rv(&e["object"]);
            assert!(r > last, "resourceVersions must grow: {e}");
            last = r;
            got.push(ev(&e));
        }
        assert_eq!(
            got,
            [
                s("ADDED", "p1"),
                s("MODIFIED", "p1"),
                s("ADDED", "p2"),
                s("DELETED", "p1")
            ]
        );
        // Live events follow.
        emu.create(pod("a", "p3", json!({}))).unwrap();
        let e = w.next_change().await;
        assert_eq!(ev(&e), s("ADDED", "p3"));
        assert_eq!(e["object"]["kind"], "Pod");
        assert_eq!(rv(&e["object"]), emu.resource_version());

        // Without a resourceVersion (or with "0"): the current objects first, as ADDED.
        for (i, q) in ["watch=1", "watch=true&resourceVersion=0"]
            .into_iter()
            .enumerate()
        {
            let mut w = Watch::open(addr, &format!("{PODS}?{q}")).await;
            let first = [
                ev(&w.next_change().await),
                ev(&w.next_change().await),
                ev(&w.next_change().await),
            ];
            assert_eq!(
                first,
                [s("ADDED", "old"), s("ADDED", "p2"), s("ADDED", "p3")],
                "{q}"
            );
            emu.apply(pod("a", "p2", json!({"v": format!("x{i}")})));
            assert_eq!(ev(&w.next_change().await), s("MODIFIED", "p2"));
        }
        // A watch on one object's path.
        let mut w = Watch::open(
            addr,
            &format!("{PODS}/p3?watch=true&resourceVersion={from}"),
        )
        .await;
        assert_eq!(ev(&w.next_change().await), s("ADDED", "p3"));
        emu.delete("Pod", Some("a"), "p3").unwrap();
        assert_eq!(ev(&w.next_change().await), s("DELETED", "p3"));
        assert!(emu.stats().open_watch_count("Pod") >= 2);
        assert!(emu.stats().watch_count("pods") >= 4);
    });
}

#[test]
fn bookmarks_arrive_and_timeout_ends_the_stream() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.set_bookmark_interval(Duration::from_millis(100));
        let from = emu.resource_version();
        let mut w = Watch::open(
            addr,
            &format!(
                "{NPS}?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=2"
            ),
        )
        .await;
        let started = Instant::now();
        let b = w.next().await;
        assert_eq!(b["type"], "BOOKMARK", "{b}");
        assert_eq!(b["object"]["kind"], "NetworkPolicy");
        assert_eq!(b["object"]["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(
            b["object"]["metadata"],
            json!({"resourceVersion": from.to_string()})
        );
        // A write of another resource moves the bookmarks' resourceVersion on.
        let later = emu.create(pod("a", "p", json!({}))).unwrap();
        loop {
            let b = w.next().await;
            assert_eq!(b["type"], "BOOKMARK", "{b}");
            if rv(&b["object"]) == later {
                break;
            }
        }
        // timeoutSeconds=2: the stream ends cleanly (last chunk), not broken.
        let end = loop {
            match w.next_within(Duration::from_secs(5)).await {
                Next::Event(e) => assert_eq!(e["type"], "BOOKMARK"),
                other => break other,
            }
        };
        assert!(matches!(end, Next::End), "{end:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
            "{took:?}"
        );
        wait_until(5, "the watch to be unregistered", || {
            emu.stats().open_watch_count("networkpolicies") == 0
        })
        .await;

        // Without allowWatchBookmarks there are none.
        let mut w = Watch::open(
            addr,
            &format!("{NPS}?watch=true&resourceVersion={from}&timeoutSeconds=1"),
        )
        .await;
        match w.next_within(Duration::from_secs(3)).await {
            Next::End => {}
            other => panic!("expected a quiet stream ending cleanly, got {other:?}"),
        }
    });
}

#[test]
fn compaction_gives_410_expired() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        let from = emu.resource_version();
        emu.create(pod("a", "p", json!({}))).unwrap();
        emu.compact();
        let floor = emu.resource_version();
        let mut w = Watch::open(addr, &format!("{PODS}?watch=true&resourceVersion={from}")).await;
        assert_eq!(w.status, 200);
        let e = w.next().await;
        assert_eq!(e["type"], "ERROR", "{e}");
        let st = &e["object"];
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["code"], 410);
        assert_eq!(st["reason"], "Expired");
        assert_eq!(
            st["message"],
            format!("too old resource version: {from} ({floor})")
        );
        assert!(matches!(
            w.next_within(Duration::from_secs(2)).await,
            Next::End
        ));
        // From the compaction point on it works.
        let mut w = Watch::open(addr, &format!("{PODS}?watch=true&resourceVersion={floor}")).await;
        emu.create(pod("a", "q", json!({}))).unwrap();
        assert_eq!(ev(&w.next_change().await), s("ADDED", "q"));

        // A bounded history forgets too.
        let emu = Emulator::with_history(3);
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        let from = emu.resource_version();
        for i in 0..4 {
            emu.create(pod("a", &format!("p{i}"), json!({}))).unwrap();
        }
        let mut w = Watch::open(addr, &format!("{PODS}?watch=true&resourceVersion={from}")).await;
        let e = w.next().await;
        assert_eq!(
            (e["type"].as_str(), e["object"]["code"].as_u64()),
            (Some("ERROR"), Some(410)),
            "{e}"
        );
        let mut w = Watch::open(
            addr,
            &format!("{PODS}?watch=true&resourceVersion={}", from + 1),
        )
        .await;
        assert_eq!(ev(&w.next_change().await), s("ADDED", "p1"));

        // An open watch that still had to send a forgotten event gets the 410 too. (The
        // runtime is single-threaded: the three writes happen before the watch can drain.)
        let emu = Emulator::with_history(2);
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        let mut pods = Watch::open(
            addr,
            &format!(
                "{PODS}?watch=true&resourceVersion={}",
                emu.resource_version()
            ),
        )
        .await;
        let mut nps = Watch::open(
            addr,
            &format!(
                "{NPS}?watch=true&resourceVersion={}",
                emu.resource_version()
            ),
        )
        .await;
        wait_until(5, "both watches", || {
            emu.stats().open_watches.values().sum::<u64>() == 2
        })
        .await;
        for i in 0..3 {
            emu.create(pod("a", &format!("p{i}"), json!({}))).unwrap();
        }
        let e = pods.next().await;
        assert_eq!(e["type"], "ERROR", "{e}");
        assert_eq!(e["object"]["code"], 410);
        // ... but a watch that wanted none of the forgotten events goes on.
        emu.create(policy("a", "np")).unwrap();
        assert_eq!(ev(&nps.next_change().await), s("ADDED", "np"));
        assert_eq!(emu.stats().expired_watches, 1);
    });
}

#[test]
fn drop_watches_cuts_streams_mid_body() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        let mut w1 = Watch::open(addr, &format!("{PODS}?watch=true")).await;
        let mut w2 = Watch::open(addr, &format!("{NPS}?watch=true&allowWatchBookmarks=true")).await;
        emu.create(pod("a", "p", json!({}))).unwrap();
        assert_eq!(ev(&w1.next_change().await), s("ADDED", "p"));
        wait_until(5, "two open watches", || {
            emu.stats().open_watches.values().sum::<u64>() == 2
        })
        .await;
        emu.drop_watches();
        for w in [&mut w1, &mut w2] {
            let r = loop {
                match w.next_within(Duration::from_secs(5)).await {
                    Next::Event(e) => assert_eq!(e["type"], "BOOKMARK", "{e}"),
                    other => break other,
                }
            };
            assert!(
                matches!(r, Next::Broken(_)),
                "the stream must break, not end: {r:?}"
            );
        }
        wait_until(5, "the watches to be gone", || {
            emu.stats().open_watches.values().sum::<u64>() == 0
        })
        .await;
        assert_eq!(emu.stats().dropped_watches, 2);
        // The server itself is fine.
        let mut w = Watch::open(addr, &format!("{PODS}?watch=true")).await;
        assert_eq!(ev(&w.next_change().await), s("ADDED", "p"));
        // A client that goes away frees its watch.
        drop(w);
        wait_until(5, "the abandoned watch to be gone", || {
            emu.stats().open_watches.values().sum::<u64>() == 0
        })
        .await;
    });
}

#[test]
fn send_initial_events_ends_with_an_annotated_bookmark() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.create(namespace("b")).unwrap();
        emu.create(policy("a", "x")).unwrap();
        emu.create(policy("b", "y")).unwrap();
        emu.create(pod("a", "p", json!({}))).unwrap();
        let now = emu.resource_version();
        let q = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0";
        let mut w = Watch::open(addr, &format!("{NPS}?{q}")).await;
        assert_eq!(ev(&w.next().await), s("ADDED", "x"));
        assert_eq!(ev(&w.next().await), s("ADDED", "y"));
        let b = w.next().await;
        assert_eq!(b["type"], "BOOKMARK", "{b}");
        assert_eq!(
            b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(b["object"]["metadata"]["resourceVersion"], now.to_string());
        emu.delete("NetworkPolicy", Some("b"), "y").unwrap();
        assert_eq!(ev(&w.next_change().await), s("DELETED", "y"));

        // In one namespace, without a resourceVersion.
        let q = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
        let mut w = Watch::open(
            addr,
            &format!("/apis/networking.k8s.io/v1/namespaces/a/networkpolicies?{q}"),
        )
        .await;
        assert_eq!(ev(&w.next().await), s("ADDED", "x"));
        assert_eq!(ev(&w.next().await).0, "BOOKMARK");

        // The real server's validation.
        for bad in [
            "watch=true&sendInitialEvents=true&allowWatchBookmarks=true",
            "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
            "watch=true&resourceVersionMatch=NotOlderThan&resourceVersion=1",
        ] {
            let (code, st) = req(addr, "GET", &format!("{NPS}?{bad}"), None).await;
            assert_eq!(code, 422, "{bad}: {st}");
            assert_eq!(st["reason"], "Invalid");
        }
    });
}

#[test]
fn selectors_on_watches_follow_objects_in_and_out() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.create(pod("a", "p", json!({"app": "web"}))).unwrap();
        emu.create(pod("a", "other", json!({"app": "db"}))).unwrap();
        let mut w = Watch::open(addr, &format!("{PODS}?watch=true&labelSelector=app%3Dweb")).await;
        assert_eq!(ev(&w.next_change().await), s("ADDED", "p"));
        emu.apply(pod("a", "other", json!({"app": "db", "x": "1"})));
        emu.apply(pod("a", "p", json!({"app": "db"})));
        let e = w.next_change().await;
        assert_eq!(ev(&e), s("DELETED", "p"), "it stopped matching");
        assert_eq!(e["object"]["metadata"]["labels"]["app"], "db");
        emu.apply(pod("a", "other", json!({"app": "web"})));
        assert_eq!(
            ev(&w.next_change().await),
            s("ADDED", "other"),
            "it started matching"
        );
        emu.apply(pod("a", "other", json!({"app": "web", "v": "2"})));
        assert_eq!(ev(&w.next_change().await), s("MODIFIED", "other"));
        emu.delete("Pod", Some("a"), "other").unwrap();
        assert_eq!(ev(&w.next_change().await), s("DELETED", "other"));
        // Field selectors too.
        let mut w = Watch::open(
            addr,
            "/api/v1/pods?watch=true&fieldSelector=metadata.name%3Dq",
        )
        .await;
        emu.create(pod("a", "r", json!({}))).unwrap();
        emu.create(pod("a", "q", json!({}))).unwrap();
        assert_eq!(ev(&w.next_change().await), s("ADDED", "q"));
        // Injected failures hit watch requests like any other.
        emu.fail_next(1, 500);
        let w = Watch::open(addr, &format!("{PODS}?watch=true")).await;
        assert_eq!(w.status, 500);
    });
}
