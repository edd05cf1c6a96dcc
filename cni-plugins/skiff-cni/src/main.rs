//! Multi-call entry point: the plugin is the file name this binary was run as
//! (`bridge`, `host-local`, `loopback`, …), or the first argument when run as
//! `skiff-cni <plugin>`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use skiff_cni::spec::{code, CniError, Env};

fn main() -> ExitCode {
    // Logs go to stderr only: stdout carries the CNI result.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKIFF_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(skiff_cni::plugins::bridge::REAP_ARG) {
        return reap(&args[2..]);
    }
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|f| f.to_str())
        .unwrap_or("skiff-cni")
        .to_string();
    let plugin = if argv0 == "skiff-cni" {
        match args.get(1) {
            Some(p) => p.clone(),
            None => {
                let e = CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "usage: skiff-cni <plugin>, or install as one of {:?}",
                        skiff_cni::PLUGINS
                    ),
                );
                return emit(Err(e));
            }
        }
    } else {
        argv0
    };

    let mut stdin = Vec::new();
    let env = Env::from_process();
    let needs_stdin = env.is_ok();
    if needs_stdin {
        if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
            return emit(Err(CniError::new(
                code::IO_FAILURE,
                format!("read stdin: {e}"),
            )));
        }
    }
    emit(skiff_cni::dispatch(&plugin, env, &stdin))
}

/// The detached helper of bridge DEL: deletes one host link.
fn reap(args: &[String]) -> ExitCode {
    let (Some(index), Some(name)) = (args.first().and_then(|s| s.parse().ok()), args.get(1)) else {
        eprintln!("usage: skiff-cni --skiff-reap-link <ifindex> <name>");
        return ExitCode::FAILURE;
    };
    match skiff_cni::plugins::bridge::reap_link(index, name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!(error = %e, "deferred link deletion failed");
            ExitCode::FAILURE
        }
    }
}

fn emit(r: Result<Option<serde_json::Value>, CniError>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match r {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!(error = %e, "plugin failed");
            let _ = writeln!(out, "{}", e.to_json());
            ExitCode::FAILURE
        }
    }
}
