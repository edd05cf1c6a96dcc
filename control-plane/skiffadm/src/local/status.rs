//! `skiffadm status`: the processes, the API, the node and the cgroup-limits line. Exits
//! non-zero unless everything is up, so scripts can wait on it.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::layout::{Layout, Settings};
use super::supervisor::live_pid;
use super::{checks, stop, up, LocalError};

fn proc_line(name: &str, pid: Option<i32>) -> String {
    match pid {
        Some(p) => format!("  {name:<13} running (pid {p})"),
        None => format!("  {name:<13} stopped"),
    }
}

pub async fn run(root: &Path) -> Result<(), LocalError> {
    let layout = Layout::new(root)?;
    let settings = Settings::require(&layout)?;
    if let Some(n) = settings.nodes {
        return super::lab::status(&layout, &settings, n).await;
    }
    println!("Local cluster in {}", root.display());
    let sup = live_pid(&layout.supervisor_pid(), "local-supervise");
    let server = live_pid(&layout.child_pid("server"), "skiff-server");
    let agent = live_pid(&layout.child_pid("agent"), "skiff-agent");
    println!("{}", proc_line("supervisor", sup));
    println!("{}", proc_line("skiff-server", server));
    let held = layout.agent_hold().exists() && agent.is_none();
    if held {
        println!("  {:<13} paused while an image is loaded", "skiff-agent");
    } else {
        println!("{}", proc_line("skiff-agent", agent));
    }
    let mut healthy = sup.is_some() && server.is_some() && agent.is_some();
    let api = format!("https://127.0.0.1:{}", settings.port);
    let node = if server.is_some() {
        match super::client(&layout).await {
            Ok(c) => {
                let nodes: Api<Node> = Api::all(c);
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    nodes.get_opt(&settings.node_name),
                )
                .await
                {
                    Ok(Ok(n)) => {
                        println!("  {:<13} reachable at {api}", "API");
                        n
                    }
                    Ok(Err(e)) => {
                        println!("  {:<13} unreachable at {api}: {e}", "API");
                        healthy = false;
                        None
                    }
                    Err(_) => {
                        println!("  {:<13} no answer within 5 s at {api}", "API");
                        healthy = false;
                        None
                    }
                }
            }
            Err(e) => {
                println!("  {:<13} {e}", "API");
                healthy = false;
                None
            }
        }
    } else {
        println!("  {:<13} down", "API");
        None
    };
    match &node {
        Some(n) if up::node_ready(n) => println!(
            "  {:<13} {} Ready, pod CIDR {}",
            "node",
            settings.node_name,
            n.spec
                .as_ref()
                .and_then(|s| s.pod_cidr.clone())
                .unwrap_or_else(|| "not allocated".into())
        ),
        Some(_) => {
            println!("  {:<13} {} not Ready", "node", settings.node_name);
            healthy = false;
        }
        None if server.is_some() => {
            println!("  {:<13} {} not registered", "node", settings.node_name);
            healthy = false;
        }
        None => {}
    }
    println!(
        "  {:<13} {} running sandbox(es)",
        "pods",
        stop::running_sandboxes(&layout).len()
    );
    match checks::run(&skiff_agent::preflight::Host::default(), root) {
        Ok(l) => println!("  {}", l.line()),
        Err(e) => println!("  {e}"),
    }
    if healthy {
        Ok(())
    } else {
        Err(LocalError::NotRunning(root.to_path_buf()))
    }
}
