//! Skiff's CNI plugins, in one multi-call binary: `bridge`, `host-local`,
//! `loopback`, `portmap` and the `skiff-overlay` meta plugin. See README.md.

pub mod cidr;
pub mod firewall;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod plugins;
pub mod spec;

use serde_json::Value;

use spec::{code, CniError, Command, Env};

/// Plugin names this binary may be installed under.
pub const PLUGINS: &[&str] = &[
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "skiff-overlay",
];

/// Runs one invocation of `plugin` with the given environment and stdin.
/// Ok(Some) is the JSON to print; errors carry the negotiated cniVersion.
pub fn dispatch(
    plugin: &str,
    env: Result<Env, CniError>,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let env = env?;
    if env.command == Command::Version {
        let requested = serde_json::from_slice::<Value>(stdin).ok().and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        return Ok(Some(spec::version_result(requested.as_deref())));
    }
    let (conf, version) = spec::negotiate_version(stdin)?;
    let tag = |mut e: CniError| {
        e.cni_version = version.clone();
        e
    };
    let min = match env.command {
        Command::Gc | Command::Status => Some("1.1.0"),
        Command::Check => Some("0.4.0"),
        _ => None,
    };
    if let Some(min) = min {
        if !spec::version_at_least(&version, min) {
            return Err(tag(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "config version {version} does not allow {}",
                    env.command.as_str()
                ),
            )));
        }
    }
    let typed = |r: Result<Option<spec::CniResult>, CniError>| {
        r.map(|o| o.map(|res| res.to_value(&version)))
    };
    let result = match plugin {
        "bridge" => typed(plugins::bridge::run(&env, &conf, stdin)),
        "host-local" => typed(ipam::host_local::run(&env, &conf)),
        // In a chain, loopback hands the previous plugin's result on (the spec asks every
        // chained plugin to output prevResult); alone, it reports `lo`.
        "loopback" => match (plugins::loopback::run(&env), conf.get("prevResult")) {
            (Ok(_), Some(prev)) if env.command == Command::Add => Ok(Some(prev.clone())),
            (result, _) => typed(result),
        },
        // These hand on a result made elsewhere: passed through untouched,
        // so fields this crate does not model survive.
        "portmap" => plugins::portmap::run(&env, &conf),
        "skiff-overlay" => plugins::overlay::run(&env, &conf),
        other => Err(CniError::new(
            code::NOT_IMPLEMENTED,
            format!("unknown plugin {other:?}; this binary answers as {PLUGINS:?}"),
        )),
    }
    .map_err(tag)?;
    Ok(result.map(|mut v| {
        v["cniVersion"] = Value::String(version.clone());
        v
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::Env;

    fn env(cmd: Command) -> Env {
        Env {
            command: cmd,
            container_id: "c".into(),
            netns: "/nonexistent/ns".into(),
            ifname: "eth0".into(),
            args: vec![],
            path: vec![],
        }
    }

    #[test]
    fn version_command_answers_without_config() {
        let v = dispatch("bridge", Ok(env(Command::Version)), b"")
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], spec::LATEST_VERSION);
        let v = dispatch(
            "bridge",
            Ok(env(Command::Version)),
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
    }

    #[test]
    fn error_codes_by_input() {
        let e = dispatch("bridge", Ok(env(Command::Add)), b"{nope").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = dispatch(
            "bridge",
            Ok(env(Command::Add)),
            br#"{"cniVersion":"7.0.0"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let raw = br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","mtu":"x"}"#;
        let e = dispatch("bridge", Ok(env(Command::Add)), raw).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert_eq!(e.cni_version, "1.0.0");
        let raw = br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;
        assert_eq!(
            dispatch("bridge", Ok(env(Command::Gc)), raw)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let raw03 = br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#;
        assert_eq!(
            dispatch("bridge", Ok(env(Command::Check)), raw03)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        let e = dispatch("flannel", Ok(env(Command::Add)), raw).unwrap_err();
        assert_eq!(e.code, code::NOT_IMPLEMENTED);
        assert!(e.msg.contains("flannel"));
        assert_eq!(
            dispatch("nope", Ok(env(Command::Add)), raw)
                .unwrap_err()
                .code,
            code::NOT_IMPLEMENTED
        );
        let env_err = CniError::new(code::INVALID_ENV, "x");
        assert_eq!(
            dispatch("bridge", Err(env_err), raw).unwrap_err().code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn portmap_passes_prev_result_through_untouched() {
        let prev = serde_json::json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "socketPath": "/s", "pciID": "p"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "table": 100, "scope": 0, "advmss": 1400}],
            "dns": {}
        });
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "n", "type": "portmap", "prevResult": prev});
        let out = dispatch(
            "portmap",
            Ok(env(Command::Add)),
            conf.to_string().as_bytes(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(out, prev);
    }

    #[test]
    fn loopback_del_without_netns_succeeds() {
        let raw = br#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#;
        assert_eq!(
            dispatch("loopback", Ok(env(Command::Del)), raw).unwrap(),
            None
        );
    }
}
