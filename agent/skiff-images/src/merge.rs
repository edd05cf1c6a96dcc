//! Merging the image configuration with a container spec, the way the kubelet and the CRI
//! runtimes do.

use crate::media::ImageConfig;

/// The PATH that containerd's CRI plugin sets when the image has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The fields of a Kubernetes container that override the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerOverrides {
    /// `command`: replaces the image's Entrypoint (and drops its Cmd).
    pub command: Vec<String>,
    /// `args`: replace the image's Cmd.
    pub args: Vec<String>,
    /// `env`, already resolved to values, in order.
    pub env: Vec<(String, String)>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<i64>,
    /// `securityContext.runAsGroup`.
    pub run_as_group: Option<i64>,
}

/// The process a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// argv; empty when neither the image nor the container names a program (the caller
    /// reports that as an error, like the kubelet's "no command specified").
    pub args: Vec<String>,
    /// `NAME=value` entries: the image's first, then the container's; a container variable
    /// replaces the image's in place.
    pub env: Vec<String>,
    /// Working directory (`/` when nobody sets one).
    pub cwd: String,
    /// The user as the image or the pod says: a uid or a name, resolved later against the
    /// rootfs' /etc/passwd. `None`: root.
    pub user: Option<String>,
    /// The group when given (`user:group` in the image, or runAsGroup).
    pub group: Option<String>,
    /// Ports the image declares (`80/tcp`), for information.
    pub exposed_ports: Vec<String>,
}

/// Merges the image config with the container's overrides.
pub fn merge_config(image: &ImageConfig, c: &ContainerOverrides) -> ProcessSpec {
    let entrypoint = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let args = match (c.command.is_empty(), c.args.is_empty()) {
        (true, true) => [entrypoint, cmd].concat(),
        (true, false) => [entrypoint, c.args.clone()].concat(),
        (false, _) => [c.command.clone(), c.args.clone()].concat(),
    };

    let mut env: Vec<String> = Vec::new();
    let set = |name: &str, value: &str, env: &mut Vec<String>| {
        let entry = format!("{name}={value}");
        match env.iter_mut().find(|e| e.split('=').next() == Some(name)) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    };
    for e in image.env.iter().flatten() {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v, &mut env);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        set("PATH", DEFAULT_PATH, &mut env);
    }
    for (k, v) in &c.env {
        set(k, v, &mut env);
    }

    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());

    let (img_user, img_group) = match image.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => match u.split_once(':') {
            Some((u, g)) => (Some(u.to_string()), Some(g.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let user = c.run_as_user.map(|u| u.to_string()).or(img_user);
    let group = c
        .run_as_group
        .map(|g| g.to_string())
        .or(if c.run_as_user.is_some() {
            // runAsUser alone: the kubelet does not keep the image's group.
            None
        } else {
            img_group
        });

    let exposed_ports = image
        .exposed_ports
        .as_ref()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();

    ProcessSpec {
        args,
        env,
        cwd,
        user,
        group,
        exposed_ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(s(&["/entry", "-x"])),
            cmd: Some(s(&["serve", "--port=80"])),
            env: Some(s(&["PATH=/bin", "A=image", "B=keep"])),
            working_dir: Some("/app".into()),
            user: Some("1000:2000".into()),
            exposed_ports: Some(
                [("80/tcp".to_string(), serde_json::json!({}))]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_overridden() {
        let p = merge_config(&image(), &ContainerOverrides::default());
        assert_eq!(p.args, s(&["/entry", "-x", "serve", "--port=80"]));
        assert_eq!(p.env, s(&["PATH=/bin", "A=image", "B=keep"]));
        assert_eq!(p.cwd, "/app");
        assert_eq!(p.user.as_deref(), Some("1000"));
        assert_eq!(p.group.as_deref(), Some("2000"));
        assert_eq!(p.exposed_ports, s(&["80/tcp"]));
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_cmd() {
        let c = ContainerOverrides {
            command: s(&["/bin/sh"]),
            ..Default::default()
        };
        assert_eq!(merge_config(&image(), &c).args, s(&["/bin/sh"]));
        let c = ContainerOverrides {
            command: s(&["/bin/sh"]),
            args: s(&["-c", "true"]),
            ..Default::default()
        };
        assert_eq!(
            merge_config(&image(), &c).args,
            s(&["/bin/sh", "-c", "true"])
        );
    }

    #[test]
    fn args_replace_cmd() {
        let c = ContainerOverrides {
            args: s(&["other"]),
            ..Default::default()
        };
        assert_eq!(
            merge_config(&image(), &c).args,
            s(&["/entry", "-x", "other"])
        );
        let mut img = image();
        img.entrypoint = None;
        assert_eq!(merge_config(&img, &c).args, s(&["other"]));
        img.cmd = None;
        assert!(merge_config(&img, &ContainerOverrides::default())
            .args
            .is_empty());
    }

    #[test]
    fn env_merge_container_wins_in_place() {
        let c = ContainerOverrides {
            env: vec![("A".into(), "pod".into()), ("C".into(), "new=x".into())],
            ..Default::default()
        };
        let p = merge_config(&image(), &c);
        assert_eq!(p.env, s(&["PATH=/bin", "A=pod", "B=keep", "C=new=x"]));
        // Default PATH when the image has none; a container PATH still wins.
        let mut img = image();
        img.env = None;
        let p = merge_config(&img, &ContainerOverrides::default());
        assert_eq!(p.env, vec![format!("PATH={DEFAULT_PATH}")]);
        let c = ContainerOverrides {
            env: vec![("PATH".into(), "/x".into())],
            ..Default::default()
        };
        assert_eq!(merge_config(&img, &c).env, s(&["PATH=/x"]));
    }

    #[test]
    fn working_dir_and_user() {
        let c = ContainerOverrides {
            working_dir: Some("/work".into()),
            run_as_user: Some(0),
            ..Default::default()
        };
        let p = merge_config(&image(), &c);
        assert_eq!(p.cwd, "/work");
        assert_eq!(p.user.as_deref(), Some("0"));
        assert_eq!(p.group, None);
        let c = ContainerOverrides {
            run_as_group: Some(5),
            ..Default::default()
        };
        let p = merge_config(&image(), &c);
        assert_eq!(
            (p.user.as_deref(), p.group.as_deref()),
            (Some("1000"), Some("5"))
        );
        let p = merge_config(&ImageConfig::default(), &ContainerOverrides::default());
        assert_eq!((p.cwd.as_str(), p.user, p.group), ("/", None, None));
    }
}
