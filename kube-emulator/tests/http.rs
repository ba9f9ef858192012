//! The REST side over raw HTTP: round trips, error Status objects, pagination, selectors,
//! injected failures and the control endpoints.

mod common;

use common::*;
use kube_emulator::Emulator;
use serde_json::{Value, json};

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn assert_status(code: u16, v: &Value, want_code: u16, reason: &str) {
    assert_eq!(code, want_code, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["apiVersion"], "v1", "{v}");
    assert_eq!(v["status"], "Failure", "{v}");
    assert_eq!(v["code"], want_code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

const PODS: &str = "/api/v1/namespaces/a/pods";

#[test]
fn create_get_list_replace_patch_delete() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        assert_eq!(emu.resource_version(), 1);

        let (code, ns) = req(addr, "POST", "/api/v1/namespaces", Some(&namespace("a"))).await;
        assert_eq!(code, 201, "{ns}");
        assert_eq!(rv(&ns), 2);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "a");

        // A pod without kind, apiVersion or namespace: the path and the server fill them in.
        let body = json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}});
        let (code, created) = req(addr, "POST", PODS, Some(&body)).await;
        assert_eq!(code, 201, "{created}");
        assert_eq!(created["kind"], "Pod");
        assert_eq!(created["apiVersion"], "v1");
        assert_eq!(created["metadata"]["namespace"], "a");
        assert_eq!(rv(&created), 3);
        assert_eq!(emu.resource_version(), 3);
        let uid = created["metadata"]["uid"].as_str().unwrap().to_string();
        assert_eq!(uid.len(), 36);
        let ts = created["metadata"]["creationTimestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
        assert_eq!(created["spec"]["nodeName"], "n1");

        let (code, got) = req(addr, "GET", &format!("{PODS}/web"), None).await;
        assert_eq!(code, 200);
        assert_eq!(got, created);
        assert_eq!(emu.get("Pod", Some("a"), "web"), Some(created.clone()));

        let (code, list) = req(addr, "GET", PODS, None).await;
        assert_eq!(code, 200);
        assert_eq!(list["kind"], "PodList");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["metadata"]["resourceVersion"], "3");
        assert_eq!(names(&list), ["web"]);
        let (_, all) = req(addr, "GET", "/api/v1/pods", None).await;
        assert_eq!(names(&all), ["web"]);
        let (_, other) = req(addr, "GET", "/api/v1/namespaces/b/pods", None).await;
        assert_eq!(names(&other), Vec::<String>::new());

        // PUT with the current resourceVersion: accepted, uid and creationTimestamp kept.
        let mut new = created.clone();
        new["metadata"]["labels"]["tier"] = json!("front");
        new["metadata"]["uid"] = Value::Null;
        let (code, replaced) = req(addr, "PUT", &format!("{PODS}/web"), Some(&new)).await;
        assert_eq!(code, 200, "{replaced}");
        assert_eq!(rv(&replaced), 4);
        assert_eq!(replaced["metadata"]["uid"], uid.as_str());
        assert_eq!(
            replaced["metadata"]["creationTimestamp"],
            created["metadata"]["creationTimestamp"]
        );
        assert_eq!(replaced["metadata"]["labels"]["tier"], "front");
        // PUT with a stale resourceVersion: 409 Conflict.
        let (code, st) = req(addr, "PUT", &format!("{PODS}/web"), Some(&new)).await;
        assert_status(code, &st, 409, "Conflict");
        assert!(
            st["message"]
                .as_str()
                .unwrap()
                .contains("the object has been modified")
        );
        // PUT of an identical object: no write.
        let (code, same) = req(addr, "PUT", &format!("{PODS}/web"), Some(&replaced)).await;
        assert_eq!(code, 200);
        assert_eq!(rv(&same), 4);
        assert_eq!(emu.resource_version(), 4);

        // Merge patch, strategic merge patch (applied as a merge patch), JSON patch.
        let (code, p) = req(
            addr,
            "PATCH",
            &format!("{PODS}/web"),
            Some(&json!({"metadata": {"labels": {"tier": null, "v": "1"}}})),
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["metadata"]["labels"], json!({"app": "web", "v": "1"}));
        assert_eq!(rv(&p), 5);
        let smp = json!({"metadata": {"labels": {"v": "2"}}});
        let (code, _, p) = raw(
            addr,
            "PATCH",
            &format!("{PODS}/web"),
            smp.to_string().as_bytes(),
            "application/strategic-merge-patch+json",
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["metadata"]["labels"]["v"], "2");
        let jp = json!([{"op": "replace", "path": "/spec/nodeName", "value": "n2"}]);
        let (code, _, p) = raw(
            addr,
            "PATCH",
            &format!("{PODS}/web"),
            jp.to_string().as_bytes(),
            "application/json-patch+json",
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["spec"]["nodeName"], "n2");
        assert_eq!(
            p["metadata"]["generation"], 2,
            "a spec change bumps the generation"
        );
        assert_eq!(rv(&p), 7);
        // A patch carrying a stale resourceVersion is a conflict.
        let (code, st) = req(
            addr,
            "PATCH",
            &format!("{PODS}/web"),
            Some(&json!({"metadata": {"resourceVersion": "3"}})),
        )
        .await;
        assert_status(code, &st, 409, "Conflict");

        // The status subresource changes only .status.
        let (code, s) = req(addr, "PUT", &format!("{PODS}/web/status"), Some(&json!({"metadata": {"name": "web"}, "status": {"podIP": "10.0.0.1"}, "spec": {"nodeName": "ignored"}}))).await;
        assert_eq!(code, 200, "{s}");
        assert_eq!(s["status"]["podIP"], "10.0.0.1");
        assert_eq!(s["spec"]["nodeName"], "n2");

        // DELETE answers the object with the deletion's resourceVersion.
        let before = emu.resource_version();
        let (code, d) = req(addr, "DELETE", &format!("{PODS}/web"), None).await;
        assert_eq!(code, 200, "{d}");
        assert_eq!(d["metadata"]["name"], "web");
        assert_eq!(rv(&d), before + 1);
        let (code, st) = req(addr, "GET", &format!("{PODS}/web"), None).await;
        assert_status(code, &st, 404, "NotFound");
        assert_eq!(st["message"], "pods \"web\" not found");
        assert_eq!(st["details"]["name"], "web");
        assert_eq!(st["details"]["kind"], "pods");
        let (code, st) = req(addr, "DELETE", &format!("{PODS}/web"), None).await;
        assert_status(code, &st, 404, "NotFound");

        // Network policies live under their group.
        let np = "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies";
        let (code, p) = req(addr, "POST", np, Some(&policy("a", "deny"))).await;
        assert_eq!(code, 201, "{p}");
        let (code, l) = req(
            addr,
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies",
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(l["kind"], "NetworkPolicyList");
        assert_eq!(l["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(names(&l), ["deny"]);
        let (code, st) = req(addr, "GET", &format!("{np}/nope"), None).await;
        assert_status(code, &st, 404, "NotFound");
        assert_eq!(
            st["message"],
            "networkpolicies.networking.k8s.io \"nope\" not found"
        );

        // Deleting a namespace deletes what is in it.
        let (code, _) = req(
            addr,
            "POST",
            "/api/v1/namespaces/a/services",
            Some(&json!({"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await;
        assert_eq!(code, 201);
        let (code, _) = req(addr, "DELETE", "/api/v1/namespaces/a", None).await;
        assert_eq!(code, 200);
        assert_eq!(emu.get("Service", Some("a"), "svc"), None);
        assert_eq!(emu.get("NetworkPolicy", Some("a"), "deny"), None);
        let (_, l) = req(addr, "GET", "/api/v1/namespaces", None).await;
        assert_eq!(names(&l), Vec::<String>::new());
    });
}

#[test]
fn endpoint_slices_are_served_under_discovery_k8s_io() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("default")).unwrap();
        let es = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
        let slice = json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"]}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        });
        let (code, o) = req(addr, "POST", es, Some(&slice)).await;
        assert_eq!(code, 201, "{o}");
        assert_eq!(o["kind"], "EndpointSlice");
        assert_eq!(o["apiVersion"], "discovery.k8s.io/v1");
        let (code, l) = req(
            addr,
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices",
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(l["kind"], "EndpointSliceList");
        assert_eq!(l["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(names(&l), ["kubernetes"]);
        let (code, l) = req(
            addr,
            "GET",
            &format!("{es}?labelSelector=kubernetes.io/service-name%3Dkubernetes"),
            None,
        )
        .await;
        assert_eq!((code, names(&l)), (200, vec!["kubernetes".to_string()]));
        let (code, st) = req(addr, "GET", &format!("{es}/nope"), None).await;
        assert_status(code, &st, 404, "NotFound");
        assert_eq!(
            st["message"],
            "endpointslices.discovery.k8s.io \"nope\" not found"
        );
        // No /status subresource, and not under another group.
        let (code, _) = req(addr, "GET", &format!("{es}/kubernetes/status"), None).await;
        assert_eq!(code, 404);
        let (code, _) = req(addr, "GET", "/api/v1/endpointslices", None).await;
        assert_eq!(code, 404);
        let (code, _) = req(
            addr,
            "GET",
            "/apis/networking.k8s.io/v1/endpointslices",
            None,
        )
        .await;
        assert_eq!(code, 404);
        // Discovery.
        let (code, g) = req(addr, "GET", "/apis/discovery.k8s.io", None).await;
        assert_eq!((code, g["kind"].clone()), (200, json!("APIGroup")));
        assert_eq!(g["preferredVersion"]["groupVersion"], "discovery.k8s.io/v1");
        let (code, r) = req(addr, "GET", "/apis/discovery.k8s.io/v1", None).await;
        assert_eq!(code, 200);
        let served: Vec<&str> = r["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(served, ["endpointslices"]);
        assert_eq!(emu.stats().list_count("endpointslices"), 2);
    });
}

#[test]
fn errors_are_status_objects() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        let (code, st) = req(addr, "GET", "/api/v1/configmaps", None).await;
        assert_status(code, &st, 404, "NotFound");
        let (code, st) = req(addr, "GET", "/nope", None).await;
        assert_status(code, &st, 404, "NotFound");

        // The namespace must exist.
        let (code, st) = req(
            addr,
            "POST",
            "/api/v1/namespaces/ghost/pods",
            Some(&pod("ghost", "p", json!({}))),
        )
        .await;
        assert_status(code, &st, 404, "NotFound");
        assert_eq!(st["message"], "namespaces \"ghost\" not found");
        assert_eq!(
            emu.create(pod("ghost", "p", json!({}))).unwrap_err().code,
            404
        );

        emu.create(namespace("a")).unwrap();
        let (code, _) = req(addr, "POST", PODS, Some(&pod("a", "p", json!({})))).await;
        assert_eq!(code, 201);
        let (code, st) = req(addr, "POST", PODS, Some(&pod("a", "p", json!({})))).await;
        assert_status(code, &st, 409, "AlreadyExists");
        assert_eq!(st["message"], "pods \"p\" already exists");
        let e = emu.create(pod("a", "p", json!({}))).unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));

        // Bad bodies: 400 naming the problem, never a panic.
        let (code, _, st) = raw(addr, "POST", PODS, b"{\"metadata\": ", "application/json").await;
        assert_status(code, &st, 400, "BadRequest");
        assert!(
            st["message"].as_str().unwrap().contains("not valid JSON"),
            "{st}"
        );
        let (code, st) = req(addr, "POST", PODS, Some(&json!([1, 2]))).await;
        assert_status(code, &st, 400, "BadRequest");
        assert!(
            st["message"].as_str().unwrap().contains("JSON object"),
            "{st}"
        );
        let (code, st) = req(addr, "POST", PODS, Some(&json!({"metadata": "x"}))).await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(addr, "POST", PODS, None).await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(
            addr,
            "POST",
            PODS,
            Some(&json!({"kind": "Service", "metadata": {"name": "x"}})),
        )
        .await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(
            addr,
            "POST",
            PODS,
            Some(&json!({"metadata": {"name": "x", "namespace": "b"}})),
        )
        .await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(
            addr,
            "POST",
            PODS,
            Some(&json!({"metadata": {"name": "Bad_Name"}})),
        )
        .await;
        assert_status(code, &st, 422, "Invalid");
        let (code, st) = req(addr, "POST", PODS, Some(&json!({"metadata": {}}))).await;
        assert_status(code, &st, 422, "Invalid");
        let (code, g) = req(
            addr,
            "POST",
            PODS,
            Some(&json!({"metadata": {"generateName": "gen-"}})),
        )
        .await;
        assert_eq!(code, 201, "{g}");
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
        let (code, _, st) = raw(addr, "POST", PODS, b"metadata: {}", "application/yaml").await;
        assert_status(code, &st, 415, "UnsupportedMediaType");

        // PUT of an absent object, PATCH with an unknown type, methods a path does not take.
        let (code, st) = req(
            addr,
            "PUT",
            &format!("{PODS}/absent"),
            Some(&pod("a", "absent", json!({}))),
        )
        .await;
        assert_status(code, &st, 404, "NotFound");
        let (code, st) = req(
            addr,
            "PUT",
            &format!("{PODS}/p"),
            Some(&pod("a", "other", json!({}))),
        )
        .await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(addr, "PATCH", &format!("{PODS}/absent"), Some(&json!({}))).await;
        assert_status(code, &st, 404, "NotFound");
        let (code, _, st) = raw(
            addr,
            "PATCH",
            &format!("{PODS}/p"),
            b"{}",
            "application/apply-patch+yaml",
        )
        .await;
        assert_status(code, &st, 415, "UnsupportedMediaType");
        let (code, _, st) = raw(
            addr,
            "PATCH",
            &format!("{PODS}/p"),
            b"[{\"op\":\"remove\",\"path\":\"/nope\"}]",
            "application/json-patch+json",
        )
        .await;
        assert_status(code, &st, 422, "Invalid");
        let (code, st) = req(addr, "PUT", PODS, Some(&json!({}))).await;
        assert_status(code, &st, 405, "MethodNotAllowed");
        let (code, st) = req(
            addr,
            "POST",
            "/api/v1/pods",
            Some(&pod("a", "q", json!({}))),
        )
        .await;
        assert_status(code, &st, 405, "MethodNotAllowed");

        // Delete preconditions.
        let (code, st) = req(
            addr,
            "DELETE",
            &format!("{PODS}/p"),
            Some(&json!({"preconditions": {"uid": "nope"}})),
        )
        .await;
        assert_status(code, &st, 409, "Conflict");
        assert!(emu.get("Pod", Some("a"), "p").is_some());

        // Bad query parameters.
        for q in [
            "labelSelector=a%20in%20x",
            "fieldSelector=spec.foo%3Dx",
            "limit=-1",
            "resourceVersion=abc&resourceVersionMatch=Exact",
        ] {
            let (code, st) = req(addr, "GET", &format!("{PODS}?{q}"), None).await;
            assert_status(code, &st, 400, "BadRequest");
        }
        let (code, st) = req(
            addr,
            "GET",
            &format!("{PODS}?resourceVersionMatch=Exact"),
            None,
        )
        .await;
        assert_status(code, &st, 422, "Invalid");
        let (code, st) = req(addr, "GET", &format!("{PODS}?continue=zz"), None).await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(
            addr,
            "GET",
            &format!("{PODS}?resourceVersion=999&resourceVersionMatch=NotOlderThan"),
            None,
        )
        .await;
        assert_status(code, &st, 504, "Timeout");

        // Discovery and health.
        let (code, v) = req(addr, "GET", "/version", None).await;
        assert_eq!(code, 200);
        assert_eq!(v["major"], "1");
        let (code, v) = req(addr, "GET", "/api", None).await;
        assert_eq!((code, v["versions"].clone()), (200, json!(["v1"])));
        let (code, v) = req(addr, "GET", "/apis", None).await;
        assert_eq!(code, 200);
        assert_eq!(v["groups"][0]["name"], "networking.k8s.io");
        assert_eq!(v["groups"][1]["name"], "discovery.k8s.io");
        let (code, v) = req(addr, "GET", "/api/v1", None).await;
        assert_eq!(code, 200);
        assert!(
            v["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "pods")
        );
        let (code, _, _) = raw(addr, "GET", "/healthz", b"", "").await;
        assert_eq!(code, 200);
    });
}

#[test]
fn pagination_is_one_consistent_snapshot() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.create(namespace("b")).unwrap();
        for i in 0..10 {
            emu.create(pod(
                if i % 2 == 0 { "a" } else { "b" },
                &format!("p{i}"),
                json!({}),
            ))
            .unwrap();
        }
        let snapshot_rv = emu.resource_version();
        let (_, full) = req(addr, "GET", "/api/v1/pods", None).await;
        let want = names(&full);
        assert_eq!(want.len(), 10);

        let (code, page) = req(addr, "GET", "/api/v1/pods?limit=4", None).await;
        assert_eq!(code, 200);
        let mut got = names(&page);
        assert_eq!(got.len(), 4);
        assert_eq!(page["metadata"]["resourceVersion"], snapshot_rv.to_string());
        assert_eq!(page["metadata"]["remainingItemCount"], 6);
        let mut token = page["metadata"]["continue"]
            .as_str()
            .expect("a continue token")
            .to_string();

        // Writes between pages: none of them may show in the rest of this list.
        emu.delete("Pod", Some("b"), "p7").unwrap();
        emu.create(pod("a", "p99", json!({}))).unwrap();
        emu.create(pod("b", "p00", json!({}))).unwrap();
        let mut changed = pod("b", "p9", json!({"changed": "yes"}));
        changed["metadata"]["resourceVersion"] = json!(null);
        emu.apply(changed);
        emu.delete("Namespace", None, "a").unwrap();

        let mut pages = 1;
        loop {
            let (code, page) = req(
                addr,
                "GET",
                &format!("/api/v1/pods?limit=4&continue={token}"),
                None,
            )
            .await;
            assert_eq!(code, 200, "{page}");
            pages += 1;
            assert_eq!(page["metadata"]["resourceVersion"], snapshot_rv.to_string());
            for item in page["items"].as_array().unwrap() {
                assert!(rv(item) <= snapshot_rv, "{item} is newer than the snapshot");
                assert!(
                    item["metadata"]["labels"].get("changed").is_none(),
                    "{item}"
                );
            }
            got.extend(names(&page));
            match page["metadata"]["continue"].as_str() {
                Some(t) => token = t.to_string(),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(got, want);

        // A fresh list sees the new state.
        let (_, now) = req(addr, "GET", "/api/v1/pods", None).await;
        assert_eq!(names(&now), ["p00", "p1", "p3", "p5", "p9"]);

        // An Exact list at the snapshot is rebuilt from history.
        let (code, exact) = req(
            addr,
            "GET",
            &format!("/api/v1/pods?resourceVersion={snapshot_rv}&resourceVersionMatch=Exact"),
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(names(&exact), want);

        // Once the history is compacted the token is expired (410), like the real server's.
        let (_, page) = req(addr, "GET", "/api/v1/pods?limit=2", None).await;
        let token = page["metadata"]["continue"].as_str().unwrap().to_string();
        emu.create(pod("b", "late", json!({}))).unwrap();
        emu.compact();
        let (code, st) = req(
            addr,
            "GET",
            &format!("/api/v1/pods?limit=2&continue={token}"),
            None,
        )
        .await;
        assert_status(code, &st, 410, "Expired");
        let (code, st) = req(
            addr,
            "GET",
            &format!("/api/v1/pods?resourceVersion={snapshot_rv}&resourceVersionMatch=Exact"),
            None,
        )
        .await;
        assert_status(code, &st, 410, "Expired");

        // limit larger than the collection: everything, no token.
        let (_, page) = req(addr, "GET", "/api/v1/pods?limit=100", None).await;
        assert_eq!(names(&page).len(), 6);
        assert!(page["metadata"].get("continue").is_none());
        let s = emu.stats();
        assert_eq!(
            s.list_continues["pods"], 3,
            "two pages and the expired token"
        );
        assert_eq!(s.lists_started("Pod"), s.list_count("pods") - 3);
    });
}

#[test]
fn label_and_field_selectors() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        let mut p1 = pod("a", "p1", json!({"app": "web", "tier": "front"}));
        p1["spec"]["nodeName"] = json!("n1");
        emu.create(p1).unwrap();
        let mut p2 = pod("a", "p2", json!({"app": "db"}));
        p2["spec"]["nodeName"] = json!("n2");
        emu.create(p2).unwrap();
        emu.create(pod("a", "p3", json!({"app": "web"}))).unwrap();
        let cases = [
            ("labelSelector=app%3Dweb", vec!["p1", "p3"]),
            ("labelSelector=app%3D%3Dweb", vec!["p1", "p3"]),
            ("labelSelector=app!%3Dweb", vec!["p2"]),
            ("labelSelector=tier", vec!["p1"]),
            ("labelSelector=!tier", vec!["p2", "p3"]),
            (
                "labelSelector=app%20in%20(web%2Cdb)",
                vec!["p1", "p2", "p3"],
            ),
            ("labelSelector=app%20notin%20(web)", vec!["p2"]),
            ("labelSelector=app%3Dweb%2C!tier", vec!["p3"]),
            ("fieldSelector=metadata.name%3Dp2", vec!["p2"]),
            ("fieldSelector=metadata.name!%3Dp2", vec!["p1", "p3"]),
            ("fieldSelector=spec.nodeName%3D%3Dn1", vec!["p1"]),
            ("fieldSelector=spec.nodeName%3D", vec!["p3"]),
            ("fieldSelector=metadata.namespace%3Db", vec![]),
            (
                "labelSelector=app%3Dweb&fieldSelector=spec.nodeName!%3Dn1",
                vec!["p3"],
            ),
        ];
        for (q, want) in cases {
            let (code, l) = req(addr, "GET", &format!("/api/v1/pods?{q}"), None).await;
            assert_eq!(code, 200, "{q}: {l}");
            assert_eq!(names(&l), want, "{q}");
        }
        // Selectors with pagination: the token carries on.
        let (_, page) = req(
            addr,
            "GET",
            "/api/v1/pods?labelSelector=app%3Dweb&limit=1",
            None,
        )
        .await;
        assert_eq!(names(&page), ["p1"]);
        let t = page["metadata"]["continue"].as_str().unwrap();
        let (_, page) = req(
            addr,
            "GET",
            &format!("/api/v1/pods?labelSelector=app%3Dweb&limit=1&continue={t}"),
            None,
        )
        .await;
        assert_eq!(names(&page), ["p3"]);
        assert!(page["metadata"].get("continue").is_none());
        // deletecollection with a selector.
        let (code, l) = req(
            addr,
            "DELETE",
            "/api/v1/namespaces/a/pods?labelSelector=app%3Dweb",
            None,
        )
        .await;
        assert_eq!(code, 200);
        assert_eq!(names(&l), ["p1", "p3"]);
        let (_, l) = req(addr, "GET", "/api/v1/pods", None).await;
        assert_eq!(names(&l), ["p2"]);
    });
}

#[test]
fn injected_failures_and_control_endpoints() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.fail_next(2, 500);
        for _ in 0..2 {
            let (code, st) = req(addr, "GET", "/api/v1/namespaces", None).await;
            assert_status(code, &st, 500, "InternalError");
        }
        let (code, _) = req(addr, "GET", "/api/v1/namespaces", None).await;
        assert_eq!(code, 200);

        let (code, v) = req(addr, "POST", "/emulator/fail_next?n=1&code=429", None).await;
        assert_eq!(code, 200, "{v}");
        let (code, headers, st) = raw(addr, "GET", "/api/v1/pods", b"", "").await;
        assert_status(code, &st, 429, "TooManyRequests");
        assert_eq!(headers["retry-after"], "1");
        let (code, v) = req(
            addr,
            "POST",
            "/emulator/fail-next",
            Some(&json!({"n": 1, "code": 503})),
        )
        .await;
        assert_eq!(code, 200, "{v}");
        let (code, st) = req(addr, "POST", "/api/v1/namespaces", Some(&namespace("x"))).await;
        assert_status(code, &st, 503, "ServiceUnavailable");
        assert!(
            emu.get("Namespace", None, "x").is_none(),
            "a failed request writes nothing"
        );

        let (code, st) = req(addr, "POST", "/emulator/fail_next?n=1", None).await;
        assert_status(code, &st, 400, "BadRequest");
        let (code, st) = req(addr, "POST", "/emulator/explode", None).await;
        assert_status(code, &st, 404, "NotFound");
        for op in [
            "compact",
            "drop_watches",
            "drop-watches",
            "bookmark_interval?ms=50",
        ] {
            let (code, v) = req(addr, "POST", &format!("/emulator/{op}"), None).await;
            assert_eq!(code, 200, "{op}: {v}");
        }
        let (code, s) = req(addr, "GET", "/emulator/stats", None).await;
        assert_eq!(code, 200);
        assert_eq!(s["injected_failures"], 4);
        assert_eq!(s["lists"]["namespaces"], 1);
        assert_eq!(s["lists"]["pods"], 0);
        assert_eq!(s["requests"], 5, "/emulator/... requests are not counted");
        assert_eq!(emu.stats().injected_failures, 4);
    });
}

#[test]
fn the_binary_serves_and_writes_a_kubeconfig() {
    in_netns(|netns| async move {
        let dir = std::env::temp_dir().join(format!("kube-emulator-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        // The child joins the test's namespace through `ip netns exec`.
        let mut child = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                env!("CARGO_BIN_EXE_kube-emulator"),
                "--listen",
                "127.0.0.1:0",
                "--kubeconfig",
            ])
            .arg(&kubeconfig)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting kube-emulator");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let line = lines.next_line().await.unwrap().expect("the address line");
        let addr: std::net::SocketAddr = line.trim().parse().unwrap();
        let text = std::fs::read_to_string(&kubeconfig).unwrap();
        assert!(text.contains(&format!("server: http://{addr}")), "{text}");
        assert!(text.contains("current-context: emulator"), "{text}");
        let (code, _) = req(addr, "POST", "/api/v1/namespaces", Some(&namespace("a"))).await;
        assert_eq!(code, 201);
        let (code, s) = req(addr, "GET", "/emulator/stats", None).await;
        assert_eq!(code, 200);
        assert_eq!(s["writes"]["namespaces"], 1);
        child.kill().await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn hostile_input_never_panics() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        emu.create(namespace("a")).unwrap();
        emu.create(pod("a", "p", json!({"app": "web"}))).unwrap();
        let gets = [
            "/api/v1/pods?labelSelector=%C3%A9%3D%C3%A9",
            "/api/v1/pods?labelSelector=a%20in%20(((",
            "/api/v1/pods?labelSelector=!!!a",
            "/api/v1/pods?labelSelector=a%3E",
            "/api/v1/pods?fieldSelector=%3D%3D%3D",
            "/api/v1/pods?fieldSelector=metadata.name",
            "/api/v1/pods?limit=99999999999999999999999",
            "/api/v1/pods?limit=18446744073709551615",
            "/api/v1/pods?continue=%00%00",
            "/api/v1/pods?continue=3000",
            "/api/v1/pods?resourceVersion=18446744073709551615",
            "/api/v1/pods?resourceVersion=-1&resourceVersionMatch=Exact",
            "/api/v1/pods?watch=maybe",
            "/api/v1/pods?watch=1&resourceVersion=x",
            "/api/v1/pods?watch=1&timeoutSeconds=-5",
            "/api/v1/namespaces/a/pods/%C3%A9",
            "/api/v1/namespaces/a/pods/p/status/extra",
            "/apis/networking.k8s.io/v1/namespaces/a/pods",
            "/api/v1/namespaces/a/namespaces",
            "/api/v2/pods",
            "/emulator/",
        ];
        for path in gets {
            let (code, _, _) = raw(addr, "GET", path, b"", "").await;
            assert!(code == 200 || (400..600).contains(&code), "{path}: {code}");
        }
        // A watch with absurd numbers is served (capped timeout, waits for the future RV).
        let mut w = Watch::open(
            addr,
            "/api/v1/pods?watch=1&timeoutSeconds=18446744073709551615&resourceVersion=18446744073709551615",
        )
        .await;
        assert_eq!(w.status, 200);
        assert!(matches!(
            w.next_within(std::time::Duration::from_millis(100)).await,
            Next::Quiet
        ));
        drop(w);
        let writes: [(&str, &str, &[u8], &str); 12] = [
            ("POST", PODS, b"\xff\xfe", "application/json"),
            ("POST", PODS, b"null", "application/json"),
            (
                "POST",
                PODS,
                b"{\"metadata\":{\"name\":5}}",
                "application/json",
            ),
            (
                "POST",
                PODS,
                b"{\"metadata\":{\"generateName\":[]}}",
                "application/json",
            ),
            ("POST", PODS, &[b'['; 5000], "application/json"),
            (
                "PUT",
                "/api/v1/namespaces/a/pods/p",
                b"{\"metadata\":{\"name\":\"p\",\"resourceVersion\":7}}",
                "application/json",
            ),
            (
                "PUT",
                "/api/v1/namespaces/a/pods/p",
                b"{\"metadata\":{\"namespace\":5}}",
                "application/json",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/a/pods/p",
                b"{\"metadata\":null}",
                "application/merge-patch+json",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/a/pods/p",
                b"\"x\"",
                "application/merge-patch+json",
            ),
            (
                "PATCH",
                "/api/v1/namespaces/a/pods/p",
                b"[{\"op\":\"move\",\"from\":\"/metadata\",\"path\":\"/metadata/x\"}]",
                "application/json-patch+json",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/a/pods/p",
                b"[1]",
                "application/json",
            ),
            (
                "POST",
                "/emulator/bookmark_interval?ms=18446744073709551615",
                b"",
                "",
            ),
        ];
        for (method, path, body, ct) in writes {
            let (code, _, v) = raw(addr, method, path, body, ct).await;
            assert!(
                code == 200 || (400..600).contains(&code),
                "{method} {path}: {code} {v}"
            );
        }
        // Still serving, and the pod is still there with its metadata intact.
        let (code, p) = req(addr, "GET", "/api/v1/namespaces/a/pods/p", None).await;
        assert_eq!(code, 200, "{p}");
        assert!(p["metadata"]["uid"].is_string(), "{p}");
        let (code, _, _) = raw(addr, "GET", "/healthz", b"", "").await;
        assert_eq!(code, 200);
    });
}
