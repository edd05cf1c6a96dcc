//! Privileged conformance tests: Skiff's plugins and the reference plugins
//! from Debian's containernetworking-plugins run with the same configs in
//! network namespaces these tests create (a "host" namespace holding the
//! bridge and iptables rules, one namespace per container), and are compared.
//! Nothing touches the real host's interfaces or iptables. Without root each
//! test prints "skipped: needs root" and returns.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

#[test]
fn add_result_and_state_match_reference() {
    require_root!();
    for version in ["1.0.0", "0.4.0", "0.3.1", "0.3.0"] {
        let mut results = Vec::new();
        for imp in ALL {
            let mut lab = Lab::new(imp);
            let c = lab.container();
            let mut conf = bridge_conf(lab.data_dir(), version, "10.244.1.0/24");
            if version == "0.3.1" {
                // The two modes exclude each other: try the other one here.
                conf["hairpinMode"] = json!(false);
                conf["promiscMode"] = json!(true);
            }
            let r = lab.cni("bridge", "ADD", c, "ctr-a", &conf);
            assert!(r.ok, "{imp:?} ADD {version}: {}", r.raw);
            assert_eq!(r.json["cniVersion"], version);
            assert_eq!(r.json["interfaces"][2]["sandbox"], lab.containers[c].path());
            let state = net_state(&lab.containers[c]);
            let br = lab
                .host
                .exec(&["ip", "-4", "-o", "addr", "show", "dev", "skiff0"]);
            let mut br: String = String::from_utf8_lossy(&br.stdout)
                .split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            let link = lab
                .host
                .exec(&["ip", "-d", "-o", "link", "show", "dev", "skiff0"]);
            let link = String::from_utf8_lossy(&link.stdout).into_owned();
            br += &format!(" promisc={}", link.contains("PROMISC"));
            let veth = lab
                .host
                .exec(&["ip", "-d", "-o", "link", "show", "type", "veth"]);
            let veth = String::from_utf8_lossy(&veth.stdout).into_owned();
            br += &format!(
                " hairpin={} mtu1400={}",
                veth.contains("hairpin on"),
                veth.contains("mtu 1400")
            );
            results.push((imp, normalize(&r.json), state, br));
        }
        let (_, reference, ref_state, ref_br) = &results[2];
        for (imp, json, state, br) in &results[..2] {
            assert_eq!(
                json, reference,
                "{imp:?}: result JSON differs for cniVersion {version}"
            );
            assert_eq!(
                state, ref_state,
                "{imp:?}: container state differs for {version}"
            );
            assert_eq!(br, ref_br, "{imp:?}: bridge address differs for {version}");
        }
        assert!(ref_state.contains("default via 10.244.1.1"), "{ref_state}");
    }
}

/// How two implementations' answers to a bad input are compared.
#[derive(Debug)]
enum Expect {
    /// Both fail with this spec code.
    Code(u64),
    /// Both fail; codes are plugin-specific (reference: 999, Skiff: the given one).
    PluginSpecific(u64),
}

#[test]
fn error_codes_match_reference() {
    require_root!();
    type Case = (
        &'static str,
        fn(&mut Value, &mut Vec<(&'static str, String)>) -> String,
        Expect,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            |_, _| "{\"cniVersion\": \"1.0.0\", bad".to_string(),
            Expect::Code(6),
        ),
        (
            "unknown cniVersion",
            |c, _| {
                c["cniVersion"] = json!("9.9.9");
                c.to_string()
            },
            Expect::Code(1),
        ),
        (
            "missing CNI_NETNS",
            |c, e| {
                e.retain(|(k, _)| *k != "CNI_NETNS");
                c.to_string()
            },
            Expect::Code(4),
        ),
        (
            "missing CNI_IFNAME",
            |c, e| {
                e.retain(|(k, _)| *k != "CNI_IFNAME");
                c.to_string()
            },
            Expect::Code(4),
        ),
        (
            "unknown CNI_COMMAND",
            |c, e| {
                e[0].1 = "FROB".to_string();
                c.to_string()
            },
            Expect::Code(4),
        ),
        (
            "netns path that does not exist",
            |c, e| {
                e[2].1 = "/run/netns/skiff-test-does-not-exist".to_string();
                c.to_string()
            },
            Expect::PluginSpecific(103),
        ),
        (
            "hairpinMode with promiscMode",
            |c, _| {
                c["promiscMode"] = json!(true);
                c.to_string()
            },
            Expect::PluginSpecific(7),
        ),
        (
            "mtu of the wrong type",
            |c, _| {
                c["mtu"] = json!("big");
                c.to_string()
            },
            Expect::PluginSpecific(7),
        ),
        (
            "rangeStart outside subnet",
            |c, _| {
                c["ipam"]["ranges"][0][0]["rangeStart"] = json!("10.9.9.9");
                c.to_string()
            },
            Expect::PluginSpecific(7),
        ),
    ];
    for (name, mutate, expect) in &cases {
        let mut codes = Vec::new();
        for imp in IMPLS {
            let mut lab = Lab::new(imp);
            let c = lab.container();
            let mut conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.2.0/24");
            let mut env = lab.env_for("ADD", c, "ctr-err");
            let stdin = mutate(&mut conf, &mut env);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = lab.call("bridge", &env, &stdin);
            assert!(!r.ok, "{imp:?} {name}: expected failure, got {}", r.raw);
            assert!(
                r.json["msg"].is_string(),
                "{imp:?} {name}: no msg in {}",
                r.raw
            );
            codes.push(r.code());
            if imp == Impl::Skiff {
                assert!(
                    lab.allocations("skiffnet").is_empty(),
                    "{name}: allocation leaked"
                );
                assert_eq!(lab.host_veths(), 0, "{name}: veth leaked");
            }
        }
        match expect {
            Expect::Code(want) => {
                assert_eq!(
                    codes,
                    vec![*want, *want],
                    "{name}: codes (skiff, reference)"
                )
            }
            Expect::PluginSpecific(ours) => {
                assert_eq!(codes[0], *ours, "{name}: skiff code");
                assert!(
                    codes[1] >= 100 || codes[1] == *ours,
                    "{name}: reference code {}",
                    codes[1]
                );
            }
        }
    }
}

#[test]
fn exhausted_range_fails_like_reference_and_leaves_nothing() {
    require_root!();
    let mut codes = Vec::new();
    for imp in IMPLS {
        let mut lab = Lab::new(imp);
        // A /30 has .1 (gateway) and .2 only.
        let conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.3.0/30");
        let a = lab.container();
        assert!(lab.cni("bridge", "ADD", a, "ctr-1", &conf).ok);
        let b = lab.container();
        let r = lab.cni("bridge", "ADD", b, "ctr-2", &conf);
        assert!(!r.ok);
        assert!(
            r.json["msg"]
                .as_str()
                .unwrap()
                .contains("no IP addresses available"),
            "{}",
            r.raw
        );
        codes.push(r.code());
        if imp == Impl::Skiff {
            let o = lab.containers[b].exec(&["ip", "link", "show", "eth0"]);
            assert!(
                !o.status.success(),
                "eth0 left behind in the failed container"
            );
            assert_eq!(lab.host_veths(), 1);
        }
    }
    assert_eq!(codes[0], 101);
    assert!(codes[1] >= 100, "reference code {}", codes[1]);
}

#[test]
fn del_is_idempotent_even_without_netns() {
    require_root!();
    for imp in ALL {
        let mut lab = Lab::new(imp);
        let conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.4.0/24");
        let a = lab.container();
        let b = lab.container();
        let add_a = lab.cni("bridge", "ADD", a, "ctr-a", &conf);
        assert!(add_a.ok, "{imp:?}: {}", add_a.raw);
        assert!(lab.cni("bridge", "ADD", b, "ctr-b", &conf).ok);
        assert_eq!(lab.allocations("skiffnet").len(), 2);
        let mut del_conf = conf.clone();
        del_conf["prevResult"] = add_a.json.clone();
        for round in 0..2 {
            let r = lab.cni("bridge", "DEL", a, "ctr-a", &del_conf);
            assert!(r.ok, "{imp:?} DEL #{round}: {}", r.raw);
            assert_eq!(r.raw.trim(), "", "DEL prints nothing");
        }
        assert_eq!(lab.allocations("skiffnet").len(), 1);
        // The second container's namespace is gone before its DEL.
        lab.containers[b].delete();
        for round in 0..2 {
            let r = lab.cni("bridge", "DEL", b, "ctr-b", &conf);
            assert!(r.ok, "{imp:?} DEL without netns #{round}: {}", r.raw);
        }
        // And with an empty CNI_NETNS.
        let r = lab.call(
            "bridge",
            &[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "ctr-b"),
                ("CNI_IFNAME", "eth0"),
            ],
            &conf.to_string(),
        );
        assert!(r.ok, "{imp:?} DEL with no CNI_NETNS: {}", r.raw);
        assert!(
            lab.allocations("skiffnet").is_empty(),
            "{imp:?}: addresses left"
        );
        // The reference finds its masquerade rules through the container's
        // address, so it leaks them when the namespace is gone and no
        // prevResult is given; Skiff names them by container ID.
        if imp != Impl::Reference {
            assert!(
                lab.nat_rules().is_empty(),
                "{imp:?}: nat rules left: {:?}",
                lab.nat_rules()
            );
        }
        // The kernel destroys a deleted namespace's veths asynchronously.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lab.host_veths() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(lab.host_veths(), 0, "{imp:?}: veths left");
    }
}

#[test]
fn check_detects_removed_address() {
    require_root!();
    for imp in ALL {
        let mut lab = Lab::new(imp);
        let mut conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.5.0/24");
        // The reference CHECK cannot verify IPAM routes without a gateway
        // (it looks for a gateway-less route that ADD installed via the
        // gateway), so this config has only the default route.
        conf["ipam"].as_object_mut().unwrap().remove("routes");
        let c = lab.container();
        let add = lab.cni("bridge", "ADD", c, "ctr-c", &conf);
        assert!(add.ok);
        let mut check = conf.clone();
        check["prevResult"] = add.json.clone();
        let r = lab.cni("bridge", "CHECK", c, "ctr-c", &check);
        assert!(r.ok, "{imp:?} CHECK on a good container: {}", r.raw);
        let addr = add.json["ips"][0]["address"].as_str().unwrap().to_string();
        let o = lab.containers[c].exec(&["ip", "addr", "del", &addr, "dev", "eth0"]);
        assert!(o.status.success());
        let r = lab.cni("bridge", "CHECK", c, "ctr-c", &check);
        assert!(!r.ok, "{imp:?}: CHECK missed the removed address");
        let code = r.code();
        assert!(code >= 100, "{imp:?} code {code}");
        if imp != Impl::Reference {
            assert_eq!(code, 106);
            assert!(r.json["msg"].as_str().unwrap().contains(&addr), "{}", r.raw);
        }
        // CHECK without prevResult is an error for both.
        assert!(!lab.cni("bridge", "CHECK", c, "ctr-c", &conf).ok);
    }
}

#[test]
fn gc_removes_stale_allocations_and_rules() {
    require_root!();
    // Debian's reference plugins (1.1.1) predate CNI 1.1.0 and have no GC:
    // then they must refuse the version, and only Skiff runs the scenario.
    let refl = Lab::new(Impl::Reference);
    let v = refl.call("bridge", &[("CNI_COMMAND", "VERSION")], "{}");
    let ref_has_gc = v.json["supportedVersions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "1.1.0"));
    let conf11 = bridge_conf(refl.data_dir(), "1.1.0", "10.244.6.0/24");
    let r = refl.call("bridge", &[("CNI_COMMAND", "GC")], &conf11.to_string());
    if !ref_has_gc {
        assert!(!r.ok, "reference accepted GC: {}", r.raw);
    }
    drop(refl);
    gc_scenario(Impl::Skiff);
    if ref_has_gc {
        gc_scenario(Impl::Reference);
    }
}

fn gc_scenario(imp: Impl) {
    let mut lab = Lab::new(imp);
    let mut conf = bridge_conf(lab.data_dir(), "1.1.0", "10.244.6.0/24");
    for id in ["keep", "stale-1", "stale-2"] {
        let c = lab.container();
        let r = lab.cni("bridge", "ADD", c, id, &conf);
        assert!(r.ok, "{}", r.raw);
    }
    assert_eq!(lab.allocations("skiffnet").len(), 3);
    assert_eq!(lab.nat_rules().len(), 9);
    let status = lab.call("bridge", &[("CNI_COMMAND", "STATUS")], &conf.to_string());
    assert!(status.ok, "STATUS: {}", status.raw);
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let r = lab.call("bridge", &[("CNI_COMMAND", "GC")], &conf.to_string());
    assert!(r.ok, "{imp:?} GC: {}", r.raw);
    assert_eq!(lab.allocations("skiffnet").len(), 1, "{imp:?}");
    let rules = lab.nat_rules();
    assert_eq!(rules.len(), 3, "{imp:?}: {rules:?}");
    assert!(
        rules.iter().all(|r| !r.contains("stale")),
        "{imp:?}: {rules:?}"
    );
    if imp != Impl::Skiff {
        return;
    }
    // GC is not allowed for configs older than 1.1.0.
    conf["cniVersion"] = json!("1.0.0");
    let r = lab.call("bridge", &[("CNI_COMMAND", "GC")], &conf.to_string());
    assert_eq!(r.code(), 1);
}

#[test]
fn two_containers_ping_each_other() {
    require_root!();
    let mut lab = Lab::new(Impl::Skiff);
    let conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.8.0/24");
    let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let mut ips = Vec::new();
    for id in ["ping-a", "ping-b"] {
        let c = lab.container();
        let r = lab.cni("bridge", "ADD", c, id, &conf);
        assert!(r.ok, "{}", r.raw);
        assert!(lab.cni("loopback", "ADD", c, id, &lo).ok);
        let addr = r.json["ips"][0]["address"].as_str().unwrap();
        ips.push(addr.split('/').next().unwrap().to_string());
    }
    for (from, to) in [
        (0, &ips[1]),
        (1, &ips[0]),
        (0, &"10.244.8.1".to_string()),
        (1, &"127.0.0.1".to_string()),
    ] {
        let o = lab.containers[from].exec(&["busybox", "ping", "-c", "1", "-W", "2", to]);
        assert!(
            o.status.success(),
            "ping {to} from container {from}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
fn loopback_matches_reference() {
    require_root!();
    for version in ["1.0.0", "0.4.0", "0.3.1"] {
        loopback_case(version);
    }
}

fn loopback_case(version: &str) {
    let mut outs = Vec::new();
    for imp in IMPLS {
        let mut lab = Lab::new(imp);
        let c = lab.container();
        let conf = json!({"cniVersion": version, "name": "lo", "type": "loopback"});
        let r = lab.cni("loopback", "ADD", c, "lo-1", &conf);
        assert!(r.ok, "{imp:?}: {}", r.raw);
        let o = lab.containers[c].exec(&["ip", "-o", "link", "show", "lo"]);
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("UP"),
            "{imp:?}: lo not up"
        );
        let mut check = conf.clone();
        check["prevResult"] = r.json.clone();
        let chk = lab.cni("loopback", "CHECK", c, "lo-1", &check);
        if version == "0.3.1" {
            // CHECK came with 0.4.0.
            assert_eq!(chk.code(), 1, "{imp:?}: {}", chk.raw);
        } else {
            assert!(chk.ok, "{imp:?} CHECK: {}", chk.raw);
        }
        assert!(
            lab.cni("loopback", "DEL", c, "lo-1", &conf).ok,
            "{imp:?} DEL"
        );
        lab.containers[c].delete();
        assert!(
            lab.cni("loopback", "DEL", c, "lo-1", &conf).ok,
            "{imp:?} DEL without netns"
        );
        outs.push(normalize(&r.json));
    }
    // Debian's reference loopback leaves out ips[].version below 1.0.0 (its
    // bridge does not); the 0.3.x/0.4.0 result format has it, and so has ours.
    if version != "1.0.0" {
        for ip in outs[0]["ips"].as_array().unwrap() {
            assert!(ip["version"].is_string(), "{ip}");
        }
    }
    for o in outs.iter_mut() {
        for ip in o["ips"].as_array_mut().unwrap() {
            ip.as_object_mut().unwrap().remove("version");
        }
    }
    assert_eq!(outs[0], outs[1], "cniVersion {version}");
}

#[test]
fn host_local_matches_reference() {
    require_root!();
    let mut outs = Vec::new();
    for imp in IMPLS {
        let mut lab = Lab::new(imp);
        let c = lab.container();
        let conf = json!({
            "cniVersion": "1.0.0", "name": "hl", "type": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": lab.data_dir(),
                "ranges": [
                    [{"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10", "rangeEnd": "10.250.0.11", "gateway": "10.250.0.254"}],
                    [{"subnet": "fd00:250::/120"}]
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.250.0.1"}]
            }
        });
        let mut seq = Vec::new();
        for id in ["h1", "h2", "h3"] {
            let r = lab.cni("host-local", "ADD", c, id, &conf);
            seq.push(if r.ok {
                normalize(&r.json)
            } else {
                json!({"failed": true})
            });
        }
        let files = lab.allocations("hl");
        assert!(lab.cni("host-local", "DEL", c, "h1", &conf).ok);
        assert!(lab.cni("host-local", "DEL", c, "h1", &conf).ok);
        let after = lab.allocations("hl");
        outs.push((seq, files, after));
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(
        outs[0].0[2],
        json!({"failed": true}),
        "third ADD must exhaust the v4 range"
    );
}

#[test]
fn version_command_matches_reference() {
    require_root!();
    for imp in IMPLS {
        let lab = Lab::new(imp);
        for plugin in ["bridge", "host-local", "loopback"] {
            let r = lab.call(
                plugin,
                &[("CNI_COMMAND", "VERSION")],
                r#"{"cniVersion":"1.0.0"}"#,
            );
            assert!(r.ok, "{imp:?} {plugin}: {}", r.raw);
            assert_eq!(r.json["cniVersion"], "1.0.0");
            let versions: Vec<&str> = r.json["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
                assert!(
                    versions.contains(&v),
                    "{imp:?} {plugin} lacks {v}: {versions:?}"
                );
            }
            if imp == Impl::Skiff {
                assert!(versions.contains(&"1.1.0"));
            }
        }
    }
}

#[test]
fn portmap_forwards_host_port_like_reference() {
    require_root!();
    let mut passthrough = Vec::new();
    for imp in IMPLS {
        let mut lab = Lab::new(imp);
        let conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.10.0/24");
        let c = lab.container();
        let add = lab.cni("bridge", "ADD", c, "ctr-pm", &conf);
        assert!(add.ok, "{}", add.raw);
        let pm = json!({
            "cniVersion": "1.0.0", "name": "skiffnet", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": add.json,
        });
        let r = lab.cni("portmap", "ADD", c, "ctr-pm", &pm);
        assert!(r.ok, "{imp:?} portmap ADD: {}", r.raw);
        assert_eq!(
            normalize(&r.json),
            normalize(&add.json),
            "{imp:?}: portmap must pass prevResult through"
        );
        passthrough.push(normalize(&r.json));

        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "hello-from-pod\n").unwrap();
        let _httpd = Bg(Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.containers[c].name,
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
            ])
            .arg(www.path())
            .spawn()
            .unwrap());
        let mut got = None;
        for _ in 0..50 {
            got = http_get(&lab.host, "10.244.10.1", 8080);
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(
            got.as_deref(),
            Some("hello-from-pod\n"),
            "{imp:?}: host port not forwarded"
        );

        let mut check = pm.clone();
        check["prevResult"] = r.json.clone();
        let r = lab.cni("portmap", "CHECK", c, "ctr-pm", &check);
        // Debian's reference portmap (1.1.1) fails CHECK on IPv4-only hosts:
        // it looks for its chain in ip6tables as well.
        if imp == Impl::Skiff {
            assert!(r.ok, "CHECK: {}", r.raw);
        }

        for round in 0..2 {
            let d = lab.cni("portmap", "DEL", c, "ctr-pm", &pm);
            assert!(d.ok, "{imp:?} portmap DEL #{round}: {}", d.raw);
        }
        assert_eq!(
            http_get(&lab.host, "10.244.10.1", 8080),
            None,
            "{imp:?}: still forwarded after DEL"
        );
        if imp == Impl::Skiff {
            let left: Vec<String> = lab
                .nat_rules()
                .into_iter()
                .filter(|r| r.contains("ctr-pm"))
                .collect();
            assert!(
                left.iter().all(|r| r.contains("SKIFF-MASQ-")),
                "portmap rules left: {left:?}"
            );
            // CHECK notices missing rules.
            let r = lab.cni("portmap", "CHECK", c, "ctr-pm", &check);
            assert_eq!(r.code(), 106, "{}", r.raw);
        }
    }
    assert_eq!(passthrough[0], passthrough[1]);
}

#[test]
fn portmap_gc_and_bad_mappings() {
    require_root!();
    let mut lab = Lab::new(Impl::Skiff);
    let conf = bridge_conf(lab.data_dir(), "1.1.0", "10.244.11.0/24");
    for (n, id) in ["gc-keep", "gc-stale"].iter().enumerate() {
        let c = lab.container();
        let add = lab.cni("bridge", "ADD", c, id, &conf);
        assert!(add.ok, "{}", add.raw);
        let pm = json!({
            "cniVersion": "1.1.0", "name": "skiffnet", "type": "portmap",
            "runtimeConfig": {"portMappings": [{"hostPort": 9000 + n, "containerPort": 80}]},
            "prevResult": add.json,
        });
        assert!(lab.cni("portmap", "ADD", c, id, &pm).ok);
    }
    let gc = json!({"cniVersion": "1.1.0", "name": "skiffnet", "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": "gc-keep", "ifname": "eth0"}]});
    let r = lab.call("portmap", &[("CNI_COMMAND", "GC")], &gc.to_string());
    assert!(r.ok, "{}", r.raw);
    let rules = lab.nat_rules();
    assert!(
        rules
            .iter()
            .any(|r| r.contains("id=gc-keep") && r.contains("DNAT")),
        "{rules:?}"
    );
    assert!(
        !rules
            .iter()
            .any(|r| r.contains("id=gc-stale") && !r.contains("SKIFF-MASQ-")),
        "{rules:?}"
    );

    let bad = json!({"cniVersion": "1.0.0", "name": "skiffnet", "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}]},
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.244.11.9/24"}]}});
    assert_eq!(lab.cni("portmap", "ADD", 0, "x", &bad).code(), 7);
    let unchained = json!({"cniVersion": "1.0.0", "name": "skiffnet", "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}});
    assert_eq!(lab.cni("portmap", "ADD", 0, "x", &unchained).code(), 7);
}

#[test]
fn readd_right_after_del_in_same_netns() {
    require_root!();
    for imp in ALL {
        for sync in [false, true] {
            if sync && imp == Impl::Reference {
                continue;
            }
            let mut lab = Lab::new(imp);
            let mut conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.9.0/24");
            conf["syncTeardown"] = json!(sync);
            let c = lab.container();
            for round in 0..3 {
                let add = lab.cni("bridge", "ADD", c, "ctr-r", &conf);
                assert!(add.ok, "{imp:?} sync={sync} ADD #{round}: {}", add.raw);
                let mut del = conf.clone();
                del["prevResult"] = add.json.clone();
                let r = lab.cni("bridge", "DEL", c, "ctr-r", &del);
                assert!(r.ok, "{imp:?} DEL #{round}: {}", r.raw);
                let o = lab.containers[c].exec(&["ip", "link", "show", "eth0"]);
                assert!(!o.status.success(), "{imp:?}: eth0 still there after DEL");
                if sync {
                    assert_eq!(lab.host_veths(), 0, "syncTeardown left a veth");
                }
            }
            // Deferred deletions finish shortly after.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while lab.host_veths() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(lab.host_veths(), 0, "{imp:?}: veths left");
            let o = lab.containers[c].exec(&["ip", "-o", "link"]);
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).lines().count(),
                1,
                "{imp:?}: only lo may remain"
            );
            assert!(lab.allocations("skiffnet").is_empty());
            assert!(lab.nat_rules().is_empty(), "{imp:?}: {:?}", lab.nat_rules());
        }
    }
}

#[test]
fn parallel_adds_and_dels_leave_nothing() {
    require_root!();
    let mut lab = Lab::new(Impl::Skiff);
    let conf = bridge_conf(lab.data_dir(), "1.0.0", "10.244.12.0/24");
    let n = 24;
    for _ in 0..n {
        lab.container();
    }
    let lab = &lab;
    let conf = &conf;
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                s.spawn(move || {
                    let mut got = Vec::new();
                    for c in (t..n).step_by(6) {
                        let id = format!("par-{c}");
                        let r = lab.cni("bridge", "ADD", c, &id, conf);
                        assert!(r.ok, "ADD {id}: {}", r.raw);
                        got.push(r.json["ips"][0]["address"].as_str().unwrap().to_string());
                    }
                    got
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), n, "duplicate addresses: {ips:?}");
    assert_eq!(lab.allocations("skiffnet").len(), n);
    let o = lab
        .host
        .exec(&["ip", "-o", "link", "show", "type", "bridge"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "one bridge only"
    );
    std::thread::scope(|s| {
        for t in 0..6 {
            s.spawn(move || {
                for c in (t..n).step_by(6) {
                    let r = lab.cni("bridge", "DEL", c, &format!("par-{c}"), conf);
                    assert!(r.ok, "DEL: {}", r.raw);
                }
            });
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lab.host_veths() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lab.host_veths(), 0);
    assert!(lab.allocations("skiffnet").is_empty());
    assert!(lab.nat_rules().is_empty(), "{:?}", lab.nat_rules());
}

#[test]
fn dual_stack_matches_reference_and_pings_at_once() {
    require_root!();
    let conf_for = |data: &Path| {
        let mut c = bridge_conf(data, "1.0.0", "10.244.13.0/24");
        c["ipam"]["ranges"] = json!([[{"subnet": "10.244.13.0/24"}], [{"subnet": "fd00:13::/64"}]]);
        c
    };
    let mut results = Vec::new();
    for imp in IMPLS {
        let mut lab = Lab::new(imp);
        let conf = conf_for(lab.data_dir());
        let c = lab.container();
        let r = lab.cni("bridge", "ADD", c, "ds-1", &conf);
        assert!(r.ok, "{imp:?}: {}", r.raw);
        assert_eq!(r.json["ips"].as_array().unwrap().len(), 2);
        results.push(normalize(&r.json));
        if imp == Impl::Skiff {
            let d = lab.container();
            let r2 = lab.cni("bridge", "ADD", d, "ds-2", &conf);
            assert!(r2.ok, "{}", r2.raw);
            let peer = r2.json["ips"][1]["address"].as_str().unwrap();
            let peer = peer.split('/').next().unwrap();
            // No waiting for duplicate address detection.
            for to in [peer, "fd00:13::1"] {
                let o = lab.containers[c].exec(&["busybox", "ping", "-c", "1", "-W", "2", to]);
                assert!(
                    o.status.success(),
                    "ping {to}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let mut del = conf.clone();
            del["prevResult"] = r.json.clone();
            assert!(lab.cni("bridge", "DEL", c, "ds-1", &del).ok);
            assert!(lab.cni("bridge", "DEL", d, "ds-2", &conf).ok);
            let o = lab.host.exec(&["ip6tables-save", "-t", "nat"]);
            let v6rules = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count();
            assert_eq!(v6rules, 0, "ip6tables rules left");
            assert!(lab.nat_rules().is_empty());
            assert!(lab.allocations("skiffnet").is_empty());
        }
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn overlay_delegates_with_the_node_subnet() {
    require_root!();
    for imp in [Impl::Skiff, Impl::OverlayOnReference] {
        let mut lab = Lab::new(imp);
        let subnet_file = lab.data_dir().join("subnet.env");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "skiff", "type": "skiff-overlay",
            "subnetFile": subnet_file,
            "dataDir": lab.data_dir().join("overlay"),
            "delegate": {"ipam": {"dataDir": lab.data_dir()}}
        });
        // Before the agent wrote the subnet file.
        let c = lab.container();
        let r = lab.cni("skiff-overlay", "ADD", c, "ov-1", &conf);
        assert_eq!(r.code(), 50, "{imp:?}: {}", r.raw);
        write_subnet_file(&subnet_file, "10.245.7.0/24");
        let mut ips = Vec::new();
        let mut results = Vec::new();
        for id in ["ov-1", "ov-2"] {
            if id == "ov-2" {
                lab.container();
            }
            let c = lab.containers.len() - 1;
            let r = lab.cni("skiff-overlay", "ADD", c, id, &conf);
            assert!(r.ok, "{imp:?} ADD: {}", r.raw);
            let addr = r.json["ips"][0]["address"].as_str().unwrap().to_string();
            assert!(addr.starts_with("10.245.7."), "{addr}");
            let routes = r.json["routes"].to_string();
            assert!(routes.contains("10.245.0.0/16"), "{routes}");
            ips.push(addr.split('/').next().unwrap().to_string());
            results.push(r.json);
        }
        let o = lab.containers[0].exec(&["ip", "-o", "link", "show", "eth0"]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("mtu 1400"));
        assert!(
            lab.nat_rules().is_empty(),
            "SKIFF_IPMASQ=true: the agent masquerades, not the bridge"
        );
        let o = lab.containers[0].exec(&["busybox", "ping", "-c", "1", "-W", "2", &ips[1]]);
        assert!(o.status.success(), "{imp:?}: ping between overlay pods");
        let mut check = conf.clone();
        check["prevResult"] = results[0].clone();
        let r = lab.cni("skiff-overlay", "CHECK", 0, "ov-1", &check);
        assert!(r.ok, "{imp:?} CHECK: {}", r.raw);
        // The node's subnet changes: DEL still uses what ADD used.
        write_subnet_file(&subnet_file, "10.245.9.0/24");
        for round in 0..2 {
            for (c, id) in [(0, "ov-1"), (1, "ov-2")] {
                let r = lab.cni("skiff-overlay", "DEL", c, id, &conf);
                assert!(r.ok, "{imp:?} DEL #{round}: {}", r.raw);
            }
        }
        assert!(
            lab.allocations("skiff").is_empty(),
            "{imp:?}: addresses left"
        );
        // Without the subnet file the plugin is not ready.
        std::fs::remove_file(&subnet_file).unwrap();
        if imp == Impl::Skiff {
            let mut status = conf.clone();
            status["cniVersion"] = json!("1.1.0");
            let r = lab.call(
                "skiff-overlay",
                &[("CNI_COMMAND", "STATUS")],
                &status.to_string(),
            );
            assert_eq!(r.code(), 50, "{}", r.raw);
        }
    }
}

#[test]
fn two_hundred_pods_leave_no_trace() {
    require_root!();
    let mut lab = Lab::new(Impl::Skiff);
    let mut conf = bridge_conf(lab.data_dir(), "1.1.0", "10.244.14.0/24");
    conf["ipMasq"] = json!(true);
    let slots = 20;
    for _ in 0..slots {
        lab.container();
    }
    let mut n = 0;
    for round in 0..10 {
        for c in 0..slots {
            let id = format!("pod-{round}-{c}");
            let add = lab.cni("bridge", "ADD", c, &id, &conf);
            assert!(add.ok, "ADD {id}: {}", add.raw);
            // Every third DEL comes without prevResult, as after a runtime
            // lost its cache.
            let mut del = conf.clone();
            if n % 3 != 0 {
                del["prevResult"] = add.json.clone();
            }
            let r = lab.cni("bridge", "DEL", c, &id, &del);
            assert!(r.ok, "DEL {id}: {}", r.raw);
            n += 1;
        }
    }
    assert_eq!(n, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lab.host_veths() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lab.host_veths(), 0, "veths left");
    assert!(lab.allocations("skiffnet").is_empty(), "addresses left");
    assert!(
        lab.nat_rules().is_empty(),
        "rules left: {:?}",
        lab.nat_rules()
    );
    for c in 0..slots {
        let o = lab.containers[c].exec(&["ip", "-o", "link"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).lines().count(),
            1,
            "leftover link in pod {c}"
        );
    }
}
