//! The single node's pod network: Skiff's CNI plugin installed under its plugin names, a
//! conflist (skiff-overlay delegating to bridge + host-local, then portmap) whose state all
//! lives under the root dir, and one masquerade chain for pod traffic leaving the pod
//! network (the subnet file says the node masquerades, so the bridge plugin does not).

use std::process::Command;

use serde_json::json;

use super::layout::{Layout, Settings};
use super::LocalError;

/// The names skiff-cni answers to (it dispatches on argv[0]).
pub const PLUGIN_NAMES: [&str; 5] = [
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "skiff-overlay",
];

pub const CONFLIST: &str = "10-skiff.conflist";

/// `<root>/cni/bin/<plugin>` → the skiff-cni binary.
pub fn install_plugins(layout: &Layout, settings: &Settings) -> Result<(), LocalError> {
    let dir = layout.cni_bin_dir();
    std::fs::create_dir_all(&dir).map_err(|e| LocalError::io(&dir, e))?;
    let target = settings.bin_dir.join("skiff-cni");
    for name in PLUGIN_NAMES {
        let link = dir.join(name);
        // Replaced every time: the bin dir may have moved since the last `up`.
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LocalError::io(&link, e)),
        }
        std::os::unix::fs::symlink(&target, &link).map_err(|e| LocalError::io(&link, e))?;
    }
    Ok(())
}

pub fn conflist(layout: &Layout, settings: &Settings) -> serde_json::Value {
    let state = layout.cni_state_dir();
    json!({
        "cniVersion": "1.0.0",
        "name": "skiff",
        "plugins": [
            {
                "type": "skiff-overlay",
                "subnetFile": layout.subnet_file(),
                "dataDir": state.join("overlay"),
                "delegate": {
                    "bridge": settings.bridge,
                    "ipam": {"dataDir": state.join("ipam")}
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

pub fn write_conflist(layout: &Layout, settings: &Settings) -> Result<(), LocalError> {
    let text = serde_json::to_string_pretty(&conflist(layout, settings)).expect("JSON");
    super::write_atomic(
        &layout.cni_conf_dir().join(CONFLIST),
        text.as_bytes(),
        0o644,
    )
}

fn iptables(args: &[&str]) -> Result<std::process::Output, LocalError> {
    Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| LocalError::Tool {
            tool: "iptables".into(),
            message: format!("{e} (Debian package iptables)"),
        })
}

/// The masquerade rules, for `iptables-restore --noflush` (nat table).
pub fn masq_rules(settings: &Settings) -> String {
    let (chain, cidr) = (&settings.masq_chain, &settings.cluster_cidr);
    format!(
        "*nat\n:{chain} - [0:0]\n-F {chain}\n-A {chain} -d {cidr} -j RETURN\n-A {chain} -j MASQUERADE\nCOMMIT\n"
    )
}

/// Installs the masquerade chain (replacing its rules) and the jump from POSTROUTING.
pub fn ensure_masquerade(settings: &Settings) -> Result<(), LocalError> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| LocalError::Tool {
            tool: "iptables-restore".into(),
            message: format!("{e} (Debian package iptables)"),
        })?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(masq_rules(settings).as_bytes())
        .map_err(|e| LocalError::Tool {
            tool: "iptables-restore".into(),
            message: e.to_string(),
        })?;
    let out = child.wait_with_output().map_err(|e| LocalError::Tool {
        tool: "iptables-restore".into(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LocalError::Tool {
            tool: "iptables-restore".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let jump = jump_args(settings);
    let mut check = vec!["-t", "nat", "-C"];
    check.extend(jump.iter().map(String::as_str));
    if !iptables(&check)?.status.success() {
        let mut add = vec!["-t", "nat", "-A"];
        add.extend(jump.iter().map(String::as_str));
        let out = iptables(&add)?;
        if !out.status.success() {
            return Err(LocalError::Tool {
                tool: "iptables".into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

fn jump_args(settings: &Settings) -> Vec<String> {
    vec![
        "POSTROUTING".into(),
        "-s".into(),
        settings.cluster_cidr.clone(),
        "-m".into(),
        "comment".into(),
        "--comment".into(),
        "skiff local pod masquerade".into(),
        "-j".into(),
        settings.masq_chain.clone(),
    ]
}

/// Removes the jump and the chain; missing pieces are fine. Errors are collected.
pub fn remove_masquerade(settings: &Settings, errors: &mut Vec<String>) {
    let jump = jump_args(settings);
    let mut del = vec!["-t", "nat", "-D"];
    del.extend(jump.iter().map(String::as_str));
    // Once per copy of the jump (a crashed `up` may have left two).
    for _ in 0..16 {
        match iptables(&del) {
            Ok(o) if o.status.success() => continue,
            Ok(_) => break,
            Err(e) => {
                errors.push(e.to_string());
                return;
            }
        }
    }
    let chain = settings.masq_chain.as_str();
    let exists = iptables(&["-t", "nat", "-S", chain]).is_ok_and(|o| o.status.success());
    if exists {
        for args in [["-t", "nat", "-F", chain], ["-t", "nat", "-X", chain]] {
            match iptables(&args) {
                Ok(o) if !o.status.success() => errors.push(format!(
                    "iptables {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => errors.push(e.to_string()),
                Ok(_) => {}
            }
        }
    }
}

/// Asks the kernel through `ip`, not /sys/class/net: sysfs shows the network namespace of
/// whoever mounted it, which need not be this process's.
/// `iptables-restore --noflush` input that removes, from one table (`save` is `iptables-save
/// -t TABLE`), every jump from another chain into a chain whose name starts with one of
/// `prefixes`, then those chains (declaring a chain flushes it, so `-X` then finds it empty).
/// With `KUBE-` it is what `kube-proxy --cleanup` does. `None` when the table has no such chain.
pub fn chains_cleanup(table: &str, save: &str, prefixes: &[&str]) -> Option<String> {
    let ours = |c: &str| prefixes.iter().any(|p| c.starts_with(p));
    let chains: Vec<&str> = save
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .filter(|c| ours(c))
        .collect();
    if chains.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    for line in save.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or("");
        let target = rule
            .split_whitespace()
            .skip_while(|w| *w != "-j" && *w != "-g")
            .nth(1)
            .unwrap_or("");
        if !ours(chain) && ours(target) {
            out += &format!("-D {rule}\n");
        }
    }
    for c in &chains {
        out += &format!(":{c} - [0:0]\n");
    }
    for c in &chains {
        out += &format!("-X {c}\n");
    }
    out += "COMMIT\n";
    Some(out)
}

fn restore(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .map_err(|e| format!("iptables-restore: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables-restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the agent's service proxy chains (nat and filter tables).
pub fn remove_proxy_chains(errors: &mut Vec<String>) {
    remove_chains(&["KUBE-"], errors)
}

/// Removes, in the nat and filter tables, every chain whose name starts with one of
/// `prefixes` and every jump into one.
pub fn remove_chains(prefixes: &[&str], errors: &mut Vec<String>) {
    for table in ["nat", "filter"] {
        let save = match Command::new("iptables-save").args(["-t", table]).output() {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                errors.push(format!(
                    "iptables-save -t {table}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                continue;
            }
            Err(e) => {
                errors.push(format!("iptables-save: {e} (Debian package iptables)"));
                return;
            }
        };
        if let Some(text) = chains_cleanup(table, &save, prefixes) {
            if let Err(e) = restore(&text) {
                errors.push(format!("removing the {prefixes:?} {table} chains: {e}"));
            }
        }
    }
}

pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes the pod bridge (the veths went with the pods' network namespaces).
pub fn remove_bridge(name: &str, errors: &mut Vec<String>) {
    if !link_exists(name) {
        return;
    }
    match Command::new("ip").args(["link", "del", name]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => errors.push(format!(
            "ip link del {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => errors.push(format!("ip link del {name}: {e} (Debian package iproute2)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn settings() -> Settings {
        Settings {
            port: 6443,
            node_name: "n".into(),
            node_ip: "127.0.0.1".into(),
            bridge: "skiftest0".into(),
            cluster_cidr: "10.250.0.0/16".into(),
            bin_dir: "/opt/bin".into(),
            cgroup_root: None,
            masq_chain: "SKIFF-LOCAL-MASQ".into(),
            nodes: None,
            cluster_dns_bind: None,
        }
    }

    #[test]
    fn conflist_keeps_every_state_under_the_root() {
        let l = Layout::new(Path::new("/r")).unwrap();
        let c = conflist(&l, &settings());
        let overlay = &c["plugins"][0];
        assert_eq!(overlay["type"], "skiff-overlay");
        assert_eq!(overlay["subnetFile"], "/r/run/subnet.env");
        assert_eq!(overlay["dataDir"], "/r/cni/state/overlay");
        assert_eq!(overlay["delegate"]["bridge"], "skiftest0");
        assert_eq!(overlay["delegate"]["ipam"]["dataDir"], "/r/cni/state/ipam");
        assert_eq!(c["plugins"][1]["type"], "portmap");
        // The agent's own parser accepts it.
        let net = skiff_agent::cni::parse_network(Path::new("/x"), &c.to_string()).unwrap();
        assert_eq!(net.plugins.len(), 2);
        assert_eq!(
            skiff_agent::subnet::overlay_subnet_file(&net.plugins),
            Some(l.subnet_file())
        );
    }

    #[test]
    fn plugins_link_to_skiff_cni() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path()).unwrap();
        let s = settings();
        install_plugins(&l, &s).unwrap();
        // Twice: replacing the links works.
        install_plugins(&l, &s).unwrap();
        for name in PLUGIN_NAMES {
            assert_eq!(
                std::fs::read_link(l.cni_bin_dir().join(name)).unwrap(),
                Path::new("/opt/bin/skiff-cni")
            );
        }
    }

    #[test]
    fn proxy_cleanup_removes_jumps_then_chains() {
        let save = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -j CNI-HOSTPORT-DNAT\n-A POSTROUTING -s 10.0.0.0/8 -j MASQUERADE\n-A KUBE-SERVICES -d 10.96.0.2/32 -p tcp -j KUBE-SVC-ABC\nCOMMIT\n";
        let text = chains_cleanup("nat", save, &["KUBE-"]).unwrap();
        assert_eq!(
            text,
            "*nat\n-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n-X KUBE-SERVICES\n-X KUBE-SVC-ABC\nCOMMIT\n"
        );
        assert_eq!(
            chains_cleanup(
                "nat",
                "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j CNI-X\nCOMMIT\n",
                &["KUBE-"]
            ),
            None
        );
    }

    #[test]
    fn masquerade_skips_the_pod_network() {
        let r = masq_rules(&settings());
        assert!(r.contains("-A SKIFF-LOCAL-MASQ -d 10.250.0.0/16 -j RETURN\n"));
        assert!(r.contains("-A SKIFF-LOCAL-MASQ -j MASQUERADE\n"));
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }
}
