//! host-local unit tests on temp dirs.
use super::*;
use serde_json::json;
use std::path::Path;

fn env(cmd: Command, id: &str) -> Env {
    Env {
        command: cmd,
        container_id: id.into(),
        netns: "/run/netns/x".into(),
        ifname: "eth0".into(),
        args: vec![],
        path: vec![],
    }
}

fn conf(dir: &Path, ranges: Value) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "testnet", "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": dir, "ranges": ranges,
                 "routes": [{"dst": "0.0.0.0/0"}],
                 "dns": {"nameservers": ["10.96.0.10"], "search": ["cluster.local"]}}
    })
}

fn add(c: &Value, id: &str) -> Result<CniResult, CniError> {
    run(&env(Command::Add, id), c).map(|r| r.unwrap())
}

#[test]
fn allocates_sequentially_skipping_gateway() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), json!([[{"subnet": "10.244.1.0/24"}]]));
    let r = add(&c, "a").unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.244.1.2/24");
    assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.244.1.1");
    assert_eq!(r.routes[0].dst.to_string(), "0.0.0.0/0");
    assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
    assert_eq!(
        add(&c, "b").unwrap().ips[0].address.to_string(),
        "10.244.1.3/24"
    );
    let content = fs::read_to_string(d.path().join("testnet/10.244.1.2")).unwrap();
    assert_eq!(content, "a\r\neth0");
}

#[test]
fn same_attachment_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), json!([[{"subnet": "10.244.1.0/24"}]]));
    let first = add(&c, "a").unwrap();
    let again = add(&c, "a").unwrap();
    assert_eq!(first.ips, again.ips);
    let store = Store::open(d.path(), "testnet").unwrap();
    assert_eq!(store.all().unwrap().len(), 1);
}

#[test]
fn range_bounds_and_exhaustion() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        d.path(),
        json!([[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.12", "gateway": "10.9.0.11"}]]),
    );
    assert_eq!(
        add(&c, "a").unwrap().ips[0].address.addr.to_string(),
        "10.9.0.10"
    );
    assert_eq!(
        add(&c, "b").unwrap().ips[0].address.addr.to_string(),
        "10.9.0.12"
    );
    let e = add(&c, "c").unwrap_err();
    assert_eq!(e.code, code::RANGE_EXHAUSTED);
    assert!(e.msg.contains("no IP addresses available"));
}

#[test]
fn release_and_round_robin() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/29"}]]));
    for id in ["a", "b", "c"] {
        add(&c, id).unwrap();
    }
    run(&env(Command::Del, "a"), &c).unwrap();
    run(&env(Command::Del, "a"), &c).unwrap();
    // Round robin continues after the last reserved (.4), not the freed .2.
    assert_eq!(
        add(&c, "d").unwrap().ips[0].address.addr.to_string(),
        "10.9.0.5"
    );
    assert_eq!(
        add(&c, "e").unwrap().ips[0].address.addr.to_string(),
        "10.9.0.6"
    );
    // Wraps around to the freed address.
    assert_eq!(
        add(&c, "f").unwrap().ips[0].address.addr.to_string(),
        "10.9.0.2"
    );
    assert_eq!(add(&c, "g").unwrap_err().code, code::RANGE_EXHAUSTED);
}

#[test]
fn dual_stack_and_multi_range_sets() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(
        d.path(),
        json!([
            [{"subnet": "fd00::/120"}],
            [{"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}]
        ]),
    );
    let a = add(&c, "a").unwrap();
    assert_eq!(a.ips.len(), 2);
    assert_eq!(a.ips[0].address.to_string(), "fd00::2/120");
    assert_eq!(a.ips[1].address.to_string(), "10.1.0.2/30");
    // 10.1.0.0/30 has just .2 once the gateway .1 is skipped; next comes the second range.
    assert_eq!(
        add(&c, "b").unwrap().ips[1].address.addr.to_string(),
        "10.2.0.2"
    );
    // The v4 set is exhausted: the v6 address reserved first must be rolled back.
    assert_eq!(add(&c, "c").unwrap_err().code, code::RANGE_EXHAUSTED);
    let store = Store::open(d.path(), "testnet").unwrap();
    assert!(store.find("c", "eth0").unwrap().is_empty());
}

#[test]
fn invalid_ranges_are_code_7() {
    let d = tempfile::tempdir().unwrap();
    for ranges in [
        json!([]),
        json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]),
        json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]),
        json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]]),
        json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]),
        json!([[{"subnet": "10.0.0.0/32"}]]),
    ] {
        let e = add(&conf(d.path(), ranges.clone()), "a").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{ranges}: {e}");
    }
    let bad =
        json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "host-local", "ranges": "x"}});
    assert_eq!(add(&bad, "a").unwrap_err().code, code::INVALID_CONFIG);
}

#[test]
fn check_and_gc() {
    let d = tempfile::tempdir().unwrap();
    let mut c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
    for id in ["a", "b", "c"] {
        add(&c, id).unwrap();
    }
    run(&env(Command::Check, "a"), &c).unwrap();
    assert_eq!(
        run(&env(Command::Check, "zz"), &c).unwrap_err().code,
        code::CHECK_MISMATCH
    );
    c["cni.dev/valid-attachments"] = json!([{"containerID": "b", "ifname": "eth0"}]);
    run(&env(Command::Gc, ""), &c).unwrap();
    let store = Store::open(d.path(), "testnet").unwrap();
    let left = store.all().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].container_id, "b");
}

#[test]
fn legacy_subnet_and_resolv_conf() {
    let d = tempfile::tempdir().unwrap();
    let rc = d.path().join("resolv.conf");
    fs::write(&rc, "nameserver 1.1.1.1\nsearch a.b c.d\noptions ndots:5\n").unwrap();
    let c = json!({"cniVersion": "0.3.1", "name": "n", "ipam": {
        "type": "host-local", "subnet": "10.5.0.0/16", "dataDir": d.path(), "resolvConf": rc}});
    let r = add(&c, "a").unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.5.0.2/16");
    assert_eq!(r.dns.search, vec!["a.b", "c.d"]);
    assert_eq!(r.dns.options, vec!["ndots:5"]);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/26"}]]));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|i| add(&c, &format!("t{t}-{i}")).unwrap().ips[0].address.addr)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 48);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 48, "an address was handed out twice");
    // 62 usable minus the gateway: 61; 13 left.
    for i in 0..13 {
        add(&c, &format!("rest-{i}")).unwrap();
    }
    assert_eq!(
        add(&c, "one-too-many").unwrap_err().code,
        code::RANGE_EXHAUSTED
    );
}

#[test]
fn status_and_gc_with_empty_keep_list() {
    let d = tempfile::tempdir().unwrap();
    let c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
    run(&env(Command::Status, ""), &c).unwrap();
    add(&c, "a").unwrap();
    add(&c, "b").unwrap();
    run(&env(Command::Gc, ""), &c).unwrap();
    let store = Store::open(d.path(), "testnet").unwrap();
    assert!(store.all().unwrap().is_empty());
}

#[test]
fn requested_addresses() {
    let d = tempfile::tempdir().unwrap();
    let mut c = conf(
        d.path(),
        json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00::/120"}]]),
    );
    c["runtimeConfig"] = json!({"ips": ["10.9.0.50/24"]});
    let r = add(&c, "a").unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.9.0.50/24");
    assert_eq!(
        r.ips[1].address.to_string(),
        "fd00::2/120",
        "the other set allocates as usual"
    );
    // Same attachment again: same answer; another one: taken.
    assert_eq!(add(&c, "a").unwrap().ips, r.ips);
    assert_eq!(add(&c, "b").unwrap_err().code, code::ADDRESS_UNAVAILABLE);
    let store = Store::open(d.path(), "testnet").unwrap();
    assert!(
        store.find("b", "eth0").unwrap().is_empty(),
        "b's v6 address rolled back"
    );
    drop(store);
    let mut e = env(Command::Add, "c");
    e.args = vec![("IP".into(), "fd00::77".into())];
    c.as_object_mut().unwrap().remove("runtimeConfig");
    let r = run(&e, &c).unwrap().unwrap();
    assert_eq!(r.ips[1].address.addr.to_string(), "fd00::77");
    c["args"] = json!({"cni": {"ips": ["10.10.0.1"]}});
    assert_eq!(add(&c, "d").unwrap_err().code, code::ADDRESS_UNAVAILABLE);
    c["args"] = json!({"cni": {"ips": ["10.9.0.1"]}});
    assert_eq!(
        add(&c, "d").unwrap_err().code,
        code::ADDRESS_UNAVAILABLE,
        "gateway"
    );
    c["args"] = json!({"cni": {"ips": ["nonsense"]}});
    assert_eq!(add(&c, "d").unwrap_err().code, code::INVALID_CONFIG);
}

#[test]
fn bad_network_name_rejected() {
    let d = tempfile::tempdir().unwrap();
    let mut c = conf(d.path(), json!([[{"subnet": "10.9.0.0/24"}]]));
    c["name"] = json!("../etc");
    assert_eq!(add(&c, "a").unwrap_err().code, code::INVALID_CONFIG);
}
