//! The few kernel operations the proxy needs, behind a trait: the real one runs the iptables
//! tools of the backend the host uses (nft or legacy) and conntrack; the fake keeps tables in
//! memory and parses restore input the way iptables-restore applies it (one table at a time,
//! all or nothing), so the sync logic is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::render::Table;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A conntrack entry filter: UDP flows to `orig_dst` (a service address) and/or `dport`,
/// that were NATed to `dst_nat` (an endpoint).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConntrackFlush {
    pub orig_dst: Option<std::net::Ipv4Addr>,
    pub dport: Option<u16>,
    pub dst_nat: Option<std::net::Ipv4Addr>,
}

pub trait Kernel: Send {
    /// `iptables-restore --noflush` of `text`; each table is applied whole or not at all.
    fn restore(&mut self, text: &str) -> Result<(), KernelError>;
    /// A table as `iptables-save` shows it.
    fn dump(&mut self, table: Table) -> Result<TableDump, KernelError>;
    /// The rules of one chain as `-A CHAIN …` lines; `None` when the chain does not exist.
    fn chain_rules(
        &mut self,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<String>>, KernelError>;
    /// Whether conntrack entries can be deleted here (the conntrack tool is installed).
    fn conntrack_available(&self) -> bool;
    fn conntrack_delete(&mut self, f: &ConntrackFlush) -> Result<(), KernelError>;
}

/// What a table holds: its user-defined chains and every rule line (`-A CHAIN …`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDump {
    pub chains: BTreeSet<String>,
    pub rules: BTreeSet<String>,
}

const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

impl TableDump {
    /// Parses `iptables-save` output.
    pub fn parse(save: &str) -> TableDump {
        let mut d = TableDump::default();
        for l in save.lines() {
            if let Some(decl) = l.strip_prefix(':') {
                let name = decl.split(' ').next().unwrap_or_default();
                if !BUILTIN_CHAINS.contains(&name) {
                    d.chains.insert(name.to_string());
                }
            } else if l.starts_with("-A ") {
                d.rules.insert(l.to_string());
            }
        }
        d
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

/// The real kernel through the iptables tools. `prefix` is prepended to every command (for
/// example `ip netns exec NAME`), which lets tests and benchmarks drive a namespace they made.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub backend: Backend,
    pub prefix: Vec<String>,
    pub conntrack: Option<PathBuf>,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Iptables {
    /// Pick the backend the host already uses, as kube-proxy's iptables-wrapper does: the one
    /// holding more rules wins (kubelet or a CNI plugin may have written some); with no rules
    /// anywhere, whatever `iptables` itself is.
    pub fn detect(prefix: Vec<String>) -> Result<Iptables, KernelError> {
        let mut probe = Iptables {
            backend: Backend::Nft,
            prefix,
            conntrack: on_path("conntrack"),
        };
        let has = |n: &str| on_path(n).is_some();
        let backend = match (has("iptables-nft-save"), has("iptables-legacy-save")) {
            (true, false) => Backend::Nft,
            (false, true) => Backend::Legacy,
            (false, false) => probe.version_backend()?,
            (true, true) => {
                let count = |p: &Iptables, tool: &str| -> usize {
                    p.run(tool, &[], None)
                        .map(|out| out.lines().filter(|l| l.starts_with("-A")).count())
                        .unwrap_or(0)
                };
                let nft = count(&probe, "iptables-nft-save");
                let legacy = count(&probe, "iptables-legacy-save");
                if legacy > nft {
                    Backend::Legacy
                } else if nft > legacy {
                    Backend::Nft
                } else {
                    probe.version_backend()?
                }
            }
        };
        probe.backend = backend;
        Ok(probe)
    }

    fn version_backend(&self) -> Result<Backend, KernelError> {
        let v = self.run("iptables", &["--version"], None)?;
        Ok(if v.contains("legacy") {
            Backend::Legacy
        } else {
            Backend::Nft
        })
    }

    fn tool(&self, base: &str) -> String {
        let suffix = match self.backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        };
        match base.split_once('-') {
            Some((head, tail)) => format!("{head}-{suffix}-{tail}"),
            None => format!("{base}-{suffix}"),
        }
    }

    /// Runs `program args` (behind the prefix), feeding `stdin`; returns stdout.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, KernelError> {
        let (exe, rest): (&str, Vec<&str>) = match self.prefix.split_first() {
            Some((first, more)) => (
                first.as_str(),
                more.iter()
                    .map(String::as_str)
                    .chain(std::iter::once(program))
                    .chain(args.iter().copied())
                    .collect(),
            ),
            None => (program, args.to_vec()),
        };
        let command = format!("{exe} {}", rest.join(" "));
        let mut child = Command::new(exe)
            .args(&rest)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| KernelError::Spawn {
                program: exe.to_string(),
                source,
            })?;
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            // A write error shows up as the tool's own failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| KernelError::Spawn {
                program: exe.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(KernelError::Failed {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn save(&self, table: Table) -> Result<String, KernelError> {
        self.run(&self.tool("iptables-save"), &["-t", table.name()], None)
    }
}

/// Whether an `iptables-save` dump declares `chain` (`:CHAIN POLICY [counters]`).
fn declares_chain(save: &str, chain: &str) -> bool {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .any(|l| l.split_whitespace().next() == Some(chain))
}

impl Kernel for Iptables {
    fn restore(&mut self, text: &str) -> Result<(), KernelError> {
        // --wait: another program (kubelet, a CNI plugin) may hold the xtables lock briefly.
        self.run(
            &self.tool("iptables-restore"),
            &["--noflush", "--wait", "5"],
            Some(text),
        )
        .map(drop)
    }

    fn dump(&mut self, table: Table) -> Result<TableDump, KernelError> {
        Ok(TableDump::parse(&self.save(table)?))
    }

    fn chain_rules(
        &mut self,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<String>>, KernelError> {
        match self.run(
            &self.tool("iptables"),
            &["-w", "5", "-t", table.name(), "-S", chain],
            None,
        ) {
            Ok(out) => Ok(Some(
                out.lines()
                    .filter(|l| l.starts_with("-A"))
                    .map(str::to_string)
                    .collect(),
            )),
            Err(KernelError::Failed { stderr, .. })
                if stderr.contains("No chain") || stderr.contains("does not exist") =>
            {
                Ok(None)
            }
            // iptables-nft 1.8.9 answers "chain `X' in table `nat' is incompatible, use 'nft'
            // tool" for a chain that does not exist, and the same for one nft made with
            // constructs iptables cannot show; the table's dump tells the two apart.
            Err(KernelError::Failed {
                command,
                status,
                stderr,
            }) if stderr.contains("incompatible") => {
                if declares_chain(&self.save(table)?, chain) {
                    Err(KernelError::Failed {
                        command,
                        status,
                        stderr,
                    })
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn conntrack_available(&self) -> bool {
        self.conntrack.is_some()
    }

    fn conntrack_delete(&mut self, f: &ConntrackFlush) -> Result<(), KernelError> {
        let Some(tool) = self.conntrack.clone() else {
            return Ok(());
        };
        let mut args: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        if let Some(ip) = f.orig_dst {
            args.extend(["--orig-dst".into(), ip.to_string()]);
        }
        if let Some(p) = f.dport {
            args.extend(["--dport".into(), p.to_string()]);
        }
        if let Some(ip) = f.dst_nat {
            args.extend(["--dst-nat".into(), ip.to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.run(&tool.to_string_lossy(), &argv, None) {
            Ok(_) => Ok(()),
            // Exit status 1 with "0 flow entries": nothing matched, which is fine.
            Err(KernelError::Failed { stderr, .. }) if stderr.contains("0 flow entries") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// In-memory iptables for unit tests: applies restore input with iptables-restore's
/// `--noflush` semantics and fails a table whose rules jump to an unknown chain or that
/// deletes a chain still referenced, leaving that table as it was.
#[derive(Debug, Default, Clone)]
pub struct FakeKernel {
    pub tables: BTreeMap<Table, BTreeMap<String, Vec<String>>>,
    pub restores: Vec<String>,
    pub conntrack: bool,
    pub conntrack_deleted: Vec<ConntrackFlush>,
    /// Make the next restore fail (after parsing), as a kernel refusal would.
    pub fail_next_restore: bool,
}

const BUILTIN_TARGETS: [&str; 8] = [
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "MASQUERADE",
    "MARK",
    "SNAT",
];

impl Kernel for FakeKernel {
    fn restore(&mut self, text: &str) -> Result<(), KernelError> {
        self.restores.push(text.to_string());
        let fail = |m: String| KernelError::Failed {
            command: "fake iptables-restore".into(),
            status: "exit status: 1".into(),
            stderr: m,
        };
        if std::mem::take(&mut self.fail_next_restore) {
            return Err(fail("injected failure".into()));
        }
        let mut current: Option<(Table, BTreeMap<String, Vec<String>>)> = None;
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('*') {
                let t = match name {
                    "nat" => Table::Nat,
                    "filter" => Table::Filter,
                    other => return Err(fail(format!("unknown table {other}"))),
                };
                let mut chains = self.tables.get(&t).cloned().unwrap_or_default();
                for b in BUILTIN_CHAINS {
                    chains.entry(b.to_string()).or_default();
                }
                current = Some((t, chains));
            } else if line == "COMMIT" {
                let (t, chains) = current
                    .take()
                    .ok_or_else(|| fail("COMMIT outside a table".into()))?;
                for rules in chains.values() {
                    for r in rules {
                        if let Some(target) =
                            r.split(" -j ").nth(1).and_then(|t| t.split(' ').next())
                        {
                            if !BUILTIN_TARGETS.contains(&target) && !chains.contains_key(target) {
                                return Err(fail(format!("{r}: no chain {target}")));
                            }
                        }
                    }
                }
                self.tables.insert(t, chains);
            } else {
                let (_, chains) = current
                    .as_mut()
                    .ok_or_else(|| fail(format!("{line}: outside a table")))?;
                if let Some(decl) = line.strip_prefix(':') {
                    let name = decl.split(' ').next().unwrap_or_default();
                    chains.insert(name.to_string(), Vec::new());
                } else if let Some(name) = line.strip_prefix("-X ") {
                    if chains.remove(name).is_none() {
                        return Err(fail(format!("-X {name}: no such chain")));
                    }
                    let used = chains.values().flatten().any(|r| {
                        r.ends_with(&format!("-j {name}")) || r.contains(&format!("-j {name} "))
                    });
                    if used {
                        return Err(fail(format!("-X {name}: chain is referenced")));
                    }
                } else if let Some(rest) = line.strip_prefix("-I ") {
                    let chain = rest.split(' ').next().unwrap_or_default();
                    chains
                        .get_mut(chain)
                        .ok_or_else(|| fail(format!("{line}: no chain {chain}")))?
                        .insert(0, format!("-A {rest}"));
                } else if let Some(rest) = line.strip_prefix("-A ") {
                    let chain = rest.split(' ').next().unwrap_or_default();
                    chains
                        .get_mut(chain)
                        .ok_or_else(|| fail(format!("{line}: no chain {chain}")))?
                        .push(line.to_string());
                } else {
                    return Err(fail(format!("cannot parse {line:?}")));
                }
            }
        }
        if current.is_some() {
            return Err(fail("input ends without COMMIT".into()));
        }
        Ok(())
    }

    fn dump(&mut self, table: Table) -> Result<TableDump, KernelError> {
        let mut d = TableDump::default();
        for (name, rules) in self.tables.get(&table).into_iter().flatten() {
            if !BUILTIN_CHAINS.contains(&name.as_str()) {
                d.chains.insert(name.clone());
            }
            d.rules.extend(rules.iter().cloned());
        }
        Ok(d)
    }

    fn chain_rules(
        &mut self,
        table: Table,
        chain: &str,
    ) -> Result<Option<Vec<String>>, KernelError> {
        Ok(self.tables.get(&table).and_then(|c| c.get(chain)).cloned())
    }

    fn conntrack_available(&self) -> bool {
        self.conntrack
    }

    fn conntrack_delete(&mut self, f: &ConntrackFlush) -> Result<(), KernelError> {
        self.conntrack_deleted.push(f.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_follow_the_backend() {
        let mut k = Iptables {
            backend: Backend::Nft,
            prefix: vec![],
            conntrack: None,
        };
        assert_eq!(k.tool("iptables-restore"), "iptables-nft-restore");
        assert_eq!(k.tool("iptables"), "iptables-nft");
        k.backend = Backend::Legacy;
        assert_eq!(k.tool("iptables-save"), "iptables-legacy-save");
    }

    #[test]
    fn fake_applies_tables_all_or_nothing() {
        let mut k = FakeKernel::default();
        k.restore("*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n")
            .unwrap();
        let bad = "*nat\n:A - [0:0]\n-A A -j NOWHERE\nCOMMIT\n";
        assert!(k.restore(bad).is_err());
        assert_eq!(
            k.chain_rules(Table::Nat, "A").unwrap(),
            Some(vec!["-A A -j RETURN".to_string()])
        );
        assert!(k
            .restore("*nat\n:B - [0:0]\n-A B -j A\nCOMMIT\n*nat\n-X A\nCOMMIT\n")
            .is_err());
        assert!(k.chain_rules(Table::Nat, "A").unwrap().is_some());
    }

    #[test]
    fn a_chain_counts_as_present_only_when_the_dump_declares_it() {
        let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert!(declares_chain(dump, "KUBE-SERVICES"));
        assert!(!declares_chain(dump, "KUBE-SERVICE"));
        assert!(!declares_chain(dump, "KUBE-NODEPORTS"));
    }

    #[test]
    fn save_output_parses_into_chains_and_rules() {
        let d = TableDump::parse(
            "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n",
        );
        assert_eq!(d.chains.iter().collect::<Vec<_>>(), ["KUBE-SERVICES"]);
        assert!(d.rules.contains("-A PREROUTING -j KUBE-SERVICES"));
    }

    #[test]
    fn a_missing_tool_is_a_clear_error() {
        let k = Iptables {
            backend: Backend::Nft,
            prefix: vec!["/nonexistent/skiff-wrapper".into()],
            conntrack: None,
        };
        let e = k.save(Table::Nat).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/skiff-wrapper"), "{e}");
    }
}
