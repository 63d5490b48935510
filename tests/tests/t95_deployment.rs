//! The deployment files, checked without Docker: `docker-compose.yml` (three
//! nodes, their certificates, the bootstrap, Prometheus), `deploy/prometheus.yml`
//! and the `Dockerfile`.
//!
//! What can drift from the code is checked against the code itself: every
//! flag in a compose command must appear in the real `agora-server node
//! --help` (or `certs --help`), and every certificate file a service names
//! must be one that `agora-server certs` really writes.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use agora_proto::cluster_file::ClusterFile;
use agora_tests::{binary, SERVER_BINARY};
use anyhow::{bail, ensure, Context as _};
use serde_yaml::{Mapping, Value};

/// The nodes the compose file runs, by id (service `nodeN`).
const NODE_IDS: [u64; 3] = [1, 2, 3];
/// Services that must exist besides the nodes.
const OTHER_SERVICES: [&str; 3] = ["certs", "init", "prometheus"];
/// Where the Prometheus image reads its configuration.
const PROMETHEUS_CONFIG: &str = "/etc/prometheus/prometheus.yml";
/// The admin RPC the `init` service calls to bootstrap the cluster.
const INITIALIZE_RPC: &str = "agora.admin.v1.AdminService/Initialize";
/// More nested merges (`<<`) than any sane compose file has.
const MAX_MERGE_DEPTH: usize = 8;

/// The repository root (this crate lives in `tests/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_text(relative: &str) -> anyhow::Result<String> {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

fn has_merge_key(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map.contains_key("<<") || map.values().any(has_merge_key),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

/// Parses a YAML file and resolves its merge keys the way compose does.
/// `apply_merge` resolves one level per pass: a merged mapping that itself
/// merges another (a node's `<<: *agora-node`, which merges the image)
/// needs a second pass.
fn load_yaml(relative: &str) -> anyhow::Result<Value> {
    let text = read_text(relative)?;
    let mut value: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{relative} is not valid YAML"))?;
    for _ in 0..MAX_MERGE_DEPTH {
        if !has_merge_key(&value) {
            return Ok(value);
        }
        value
            .apply_merge()
            .with_context(|| format!("{relative} has a bad merge key"))?;
    }
    bail!("{relative} nests merge keys more than {MAX_MERGE_DEPTH} deep")
}

/// The `services` mapping of the compose file.
fn services(compose: &Value) -> anyhow::Result<&Mapping> {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .context("docker-compose.yml has no services mapping")
}

fn service<'a>(compose: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    services(compose)?
        .get(name)
        .with_context(|| format!("docker-compose.yml has no service {name}"))
}

fn node_service(id: u64) -> String {
    format!("node{id}")
}

/// A scalar as text (compose accepts numbers where it means strings).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A `command` or `entrypoint`: a list, or a string compose splits on
/// whitespace (the files here use lists; quoting is not modelled).
fn words(value: Option<&Value>) -> anyhow::Result<Vec<String>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| scalar(item).with_context(|| format!("{item:?} is not a word")))
            .collect(),
        Some(other) => bail!("{other:?} is neither a string nor a list"),
    }
}

fn command(service: &Value) -> anyhow::Result<Vec<String>> {
    words(service.get("command"))
}

/// The value of `--flag VALUE` or `--flag=VALUE` in a command line.
fn flag_value<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, word)| {
        if word == flag {
            command.get(i + 1).map(String::as_str)
        } else {
            word.strip_prefix(flag)
                .and_then(|rest| rest.strip_prefix('='))
        }
    })
}

fn required_flag<'a>(command: &'a [String], flag: &str, who: &str) -> anyhow::Result<&'a str> {
    flag_value(command, flag).with_context(|| format!("{who}'s command has no {flag}"))
}

/// Every `--flag` a command line uses (without any `=value`).
fn flags_used(command: &[String]) -> BTreeSet<String> {
    command
        .iter()
        .filter(|word| word.starts_with("--"))
        .map(|word| word.split('=').next().unwrap_or(word).to_owned())
        .collect()
}

/// Every `--flag` a clap help text documents.
fn flags_documented(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_owned)
        .collect()
}

fn server_help(subcommand: &str) -> anyhow::Result<String> {
    let server = binary(SERVER_BINARY)?;
    let output = Command::new(&server)
        .args([subcommand, "--help"])
        .output()
        .with_context(|| format!("cannot run {}", server.display()))?;
    ensure!(
        output.status.success(),
        "agora-server {subcommand} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The port of a `host:port` (or `ip:port`) address.
fn port_of(addr: &str) -> anyhow::Result<u16> {
    let (_, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr:?} is not host:port"))?;
    port.parse()
        .with_context(|| format!("{addr:?} does not end in a port number"))
}

fn port_number(text: &str, what: &str) -> anyhow::Result<u16> {
    let port: u16 = text
        .parse()
        .with_context(|| format!("{what} {text:?} is not a single port number"))?;
    ensure!(port > 0, "{what} {text:?} is port 0");
    Ok(port)
}

/// One published port.
#[derive(Debug, PartialEq, Eq)]
struct PortMapping {
    /// The host address it binds, when not all of them.
    host_ip: Option<IpAddr>,
    /// The host port; `None` lets Docker pick one.
    host: Option<u16>,
    /// The port inside the container.
    container: u16,
}

/// Parses one entry of `ports`: the short syntax
/// `[HOST_IP:][HOST:]CONTAINER[/PROTOCOL]`, a bare number, or the long
/// syntax (`target`, `published`, `host_ip`).
fn parse_port(entry: &Value) -> anyhow::Result<PortMapping> {
    match entry {
        Value::Number(n) => Ok(PortMapping {
            host_ip: None,
            host: None,
            container: port_number(&n.to_string(), "container port")?,
        }),
        Value::String(text) => {
            let (spec, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
            ensure!(
                protocol == "tcp" || protocol == "udp",
                "port mapping {text:?}: unknown protocol {protocol:?}"
            );
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            let container = port_number(parts[0], "container port")
                .with_context(|| format!("port mapping {text:?}"))?;
            let host = match parts.get(1) {
                Some(host) => Some(
                    port_number(host, "host port")
                        .with_context(|| format!("port mapping {text:?}"))?,
                ),
                None => None,
            };
            let host_ip = match parts.get(2) {
                Some(ip) => Some(
                    ip.parse()
                        .with_context(|| format!("port mapping {text:?}: bad host address"))?,
                ),
                None => None,
            };
            Ok(PortMapping {
                host_ip,
                host,
                container,
            })
        }
        Value::Mapping(map) => {
            let field = |name: &str| map.get(name).and_then(scalar);
            let container = field("target").context("a long-syntax port has no target")?;
            Ok(PortMapping {
                host_ip: field("host_ip").map(|ip| ip.parse()).transpose()?,
                host: field("published")
                    .map(|p| port_number(&p, "published port"))
                    .transpose()?,
                container: port_number(&container, "target port")?,
            })
        }
        other => bail!("port mapping {other:?} is neither a string, a number nor a mapping"),
    }
}

fn ports(service: &Value) -> anyhow::Result<Vec<PortMapping>> {
    match service.get("ports") {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(parse_port).collect(),
        Some(other) => bail!("ports {other:?} is not a list"),
    }
}

/// The ports a service's container opens to the compose network: `expose`
/// and the container side of `ports`.
fn container_ports(service: &Value) -> anyhow::Result<BTreeSet<u16>> {
    let mut open: BTreeSet<u16> = ports(service)?.iter().map(|p| p.container).collect();
    if let Some(expose) = service.get("expose") {
        let items = expose.as_sequence().context("expose is not a list")?;
        for item in items {
            let text = scalar(item).context("an expose entry is not a port")?;
            let port = text.split('/').next().unwrap_or(&text);
            open.insert(port_number(port, "exposed port")?);
        }
    }
    Ok(open)
}

/// One entry of a service's `volumes`.
#[derive(Debug)]
struct Mount {
    /// A named volume, a host path (bind mount), or nothing (anonymous).
    source: Option<String>,
    /// The path inside the container.
    target: String,
}

impl Mount {
    /// A named volume (declared at the top level), not a host path.
    fn volume_name(&self) -> Option<&str> {
        self.source
            .as_deref()
            .filter(|s| !(s.starts_with('.') || s.starts_with('/') || s.starts_with('~')))
    }
}

fn parse_mount(entry: &Value) -> anyhow::Result<Mount> {
    match entry {
        Value::String(text) => {
            let parts: Vec<&str> = text.split(':').collect();
            match parts.as_slice() {
                [target] => Ok(Mount {
                    source: None,
                    target: (*target).to_owned(),
                }),
                [source, target] | [source, target, _] => Ok(Mount {
                    source: Some((*source).to_owned()),
                    target: (*target).to_owned(),
                }),
                _ => bail!("volume entry {text:?} is not SOURCE:TARGET[:MODE]"),
            }
        }
        Value::Mapping(map) => Ok(Mount {
            source: map.get("source").and_then(scalar),
            target: map
                .get("target")
                .and_then(scalar)
                .context("a long-syntax volume has no target")?,
        }),
        other => bail!("volume entry {other:?} is neither a string nor a mapping"),
    }
}

fn mounts(service: &Value) -> anyhow::Result<Vec<Mount>> {
    match service.get("volumes") {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(parse_mount).collect(),
        Some(other) => bail!("volumes {other:?} is not a list"),
    }
}

/// The services a service depends on, with the condition it waits for.
fn depends_on(service: &Value) -> anyhow::Result<BTreeMap<String, String>> {
    const STARTED: &str = "service_started";
    match service.get("depends_on") {
        None => Ok(BTreeMap::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                scalar(item)
                    .map(|name| (name, STARTED.to_owned()))
                    .context("a depends_on entry is not a service name")
            })
            .collect(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(name, spec)| {
                let name = scalar(name).context("a depends_on key is not a service name")?;
                let condition = spec
                    .get("condition")
                    .and_then(scalar)
                    .unwrap_or_else(|| STARTED.to_owned());
                Ok((name, condition))
            })
            .collect(),
        Some(other) => bail!("depends_on {other:?} is neither a list nor a mapping"),
    }
}

/// What the compose file says about one node.
struct NodeSpec {
    id: u64,
    command: Vec<String>,
    data_dir: String,
    api_port: u16,
    raft_port: u16,
    metrics_port: u16,
    advertise_api: String,
    advertise_raft: String,
    /// `--ca-cert`, `--cert` and `--key`.
    cert_files: Vec<String>,
}

fn node_spec(compose: &Value, id: u64) -> anyhow::Result<NodeSpec> {
    let name = node_service(id);
    let command = command(service(compose, &name)?)?;
    let flag = |flag: &str| required_flag(&command, flag, &name).map(str::to_owned);
    Ok(NodeSpec {
        id,
        data_dir: flag("--data-dir")?,
        api_port: port_of(&flag("--api-listen")?)?,
        raft_port: port_of(&flag("--raft-listen")?)?,
        metrics_port: port_of(&flag("--metrics-listen")?)?,
        advertise_api: flag("--advertise-api")?,
        advertise_raft: flag("--advertise-raft")?,
        cert_files: vec![flag("--ca-cert")?, flag("--cert")?, flag("--key")?],
        command,
    })
}

/// The certificate directory: `--out` of the `certs` service's command.
fn certs_dir(compose: &Value) -> anyhow::Result<String> {
    let command = command(service(compose, "certs")?)?;
    Ok(required_flag(&command, "--out", "certs")?.to_owned())
}

/// Runs the real `agora-server certs` with the compose file's arguments in
/// a temporary directory, and maps a path under the compose file's
/// certificate directory to the file it made.
struct RealCerts {
    dir: tempfile::TempDir,
    compose_dir: String,
}

impl RealCerts {
    fn make(compose: &Value) -> anyhow::Result<Self> {
        let command = command(service(compose, "certs")?)?;
        let nodes = required_flag(&command, "--nodes", "certs")?;
        let dir = tempfile::tempdir()?;
        let server = binary(SERVER_BINARY)?;
        let output = Command::new(&server)
            .arg("certs")
            .arg("--out")
            .arg(dir.path())
            .args(["--nodes", nodes])
            .output()
            .with_context(|| format!("cannot run {}", server.display()))?;
        ensure!(
            output.status.success(),
            "agora-server certs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Self {
            dir,
            compose_dir: certs_dir(compose)?,
        })
    }

    /// Fails unless `path` (a path inside a container) is a file that
    /// `agora-server certs` wrote.
    fn check(&self, path: &str, who: &str) -> anyhow::Result<()> {
        let relative = Path::new(path)
            .strip_prefix(&self.compose_dir)
            .with_context(|| {
                format!(
                    "{who} reads {path}, outside the certificate directory {}",
                    self.compose_dir
                )
            })?;
        ensure!(
            self.dir.path().join(relative).is_file(),
            "{who} reads {path}, but `agora-server certs` makes no such file"
        );
        Ok(())
    }
}

#[test]
fn compose_has_every_service() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let services = services(&compose)?;
    let names: Vec<String> = NODE_IDS
        .iter()
        .map(|&id| node_service(id))
        .chain(OTHER_SERVICES.iter().map(|&s| s.to_owned()))
        .collect();
    for name in names {
        ensure!(services.contains_key(name.as_str()), "no service {name}");
    }
    for (name, spec) in services {
        let name = scalar(name).context("a service name is not a string")?;
        ensure!(
            spec.get("image").is_some() || spec.get("build").is_some(),
            "service {name} has neither an image nor a build"
        );
    }
    Ok(())
}

#[test]
fn compose_has_no_accidental_interpolation() -> anyhow::Result<()> {
    // Compose replaces `$NAME` with the host's environment before anything
    // runs: a shell variable in a script must be written `$$NAME`.
    let text = read_text("docker-compose.yml")?;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '$' => match chars.next() {
                Some('$' | '{') => {}
                _ => bail!("docker-compose.yml line {line}: a lone `$` (write `$$`)"),
            },
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn every_node_is_complete_and_alone_on_its_volume() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let certs_dir = certs_dir(&compose)?;
    let mut data_volumes = BTreeSet::new();
    for id in NODE_IDS {
        let name = node_service(id);
        let node = service(&compose, &name)?;
        let spec = node_spec(&compose, id)?;
        ensure!(
            spec.command
                .windows(3)
                .any(|w| w[0] == "node" && w[1] == "--id" && w[2] == id.to_string()),
            "{name}'s command does not contain `node --id {id}`: {:?}",
            spec.command
        );

        let mounts = mounts(node)?;
        let data = mounts
            .iter()
            .find(|m| m.target == spec.data_dir)
            .with_context(|| format!("{name} mounts nothing on its data dir {}", spec.data_dir))?;
        let volume = data
            .volume_name()
            .with_context(|| format!("{name}'s data dir is not on a named volume"))?;
        ensure!(
            data_volumes.insert(volume.to_owned()),
            "{name} shares the data volume {volume} with another node"
        );
        ensure!(
            mounts.iter().any(|m| m.target == certs_dir),
            "{name} does not mount the certificate directory {certs_dir}"
        );

        let depends = depends_on(node)?;
        ensure!(
            depends.get("certs").map(String::as_str) == Some("service_completed_successfully"),
            "{name} must wait for certs to complete successfully: {depends:?}"
        );

        let open = container_ports(node)?;
        for port in [spec.api_port, spec.raft_port, spec.metrics_port] {
            ensure!(
                open.contains(&port),
                "{name} listens on {port} but does not expose it"
            );
        }
        // Announced addresses: its own service name, on the ports it binds.
        ensure!(
            spec.advertise_api == format!("{name}:{}", spec.api_port),
            "{name} announces its API as {} but listens on {}",
            spec.advertise_api,
            spec.api_port
        );
        ensure!(
            spec.advertise_raft == format!("{name}:{}", spec.raft_port),
            "{name} announces Raft as {} but listens on {}",
            spec.advertise_raft,
            spec.raft_port
        );
        let healthcheck = node
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .with_context(|| format!("{name} has no healthcheck"))?;
        ensure!(
            words(Some(healthcheck))?
                .iter()
                .any(|w| w.contains(&spec.metrics_port.to_string())),
            "{name}'s healthcheck does not probe its metrics port {}",
            spec.metrics_port
        );
        // Raft is for nodes only: never published on the host.
        for port in ports(node)? {
            ensure!(
                port.container != spec.raft_port,
                "{name} publishes its Raft port {} on the host",
                spec.raft_port
            );
        }
    }
    Ok(())
}

#[test]
fn port_mappings_are_well_formed_and_distinct() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let mut published = BTreeMap::new();
    for (name, spec) in services(&compose)? {
        let name = scalar(name).context("a service name is not a string")?;
        for port in ports(spec).with_context(|| format!("service {name}"))? {
            if let Some(host) = port.host {
                let key = (port.host_ip, host);
                if let Some(other) = published.insert(key, name.clone()) {
                    bail!("{name} and {other} both publish host port {host}");
                }
            }
        }
    }
    ensure!(!published.is_empty(), "nothing is published on the host");
    Ok(())
}

#[test]
fn every_named_volume_is_declared() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let declared: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .context("docker-compose.yml declares no volumes")?
        .keys()
        .filter_map(scalar)
        .collect();
    let mut used = BTreeSet::new();
    for (name, spec) in services(&compose)? {
        let name = scalar(name).context("a service name is not a string")?;
        for mount in mounts(spec)? {
            if let Some(volume) = mount.volume_name() {
                ensure!(
                    declared.contains(volume),
                    "service {name} uses the volume {volume}, which is not declared"
                );
                used.insert(volume.to_owned());
            } else if let Some(path) = &mount.source {
                // A bind mount of a file in this repository.
                ensure!(
                    repo_root().join(path).exists(),
                    "service {name} mounts {path}, which does not exist"
                );
            }
        }
    }
    let unused: Vec<&String> = declared.difference(&used).collect();
    ensure!(unused.is_empty(), "declared but unused volumes: {unused:?}");
    Ok(())
}

#[test]
fn waits_are_on_services_that_can_satisfy_them() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let services = services(&compose)?;
    for (name, spec) in services {
        let name = scalar(name).context("a service name is not a string")?;
        for (dependency, condition) in depends_on(spec)? {
            let target = services
                .get(dependency.as_str())
                .with_context(|| format!("{name} depends on a missing service {dependency}"))?;
            match condition.as_str() {
                "service_healthy" => ensure!(
                    target.get("healthcheck").is_some(),
                    "{name} waits for {dependency} to be healthy, but it has no healthcheck"
                ),
                "service_completed_successfully" => ensure!(
                    target.get("restart").and_then(scalar).as_deref() == Some("no"),
                    "{name} waits for {dependency} to complete; it must not restart"
                ),
                "service_started" => {}
                other => bail!("{name}: unknown depends_on condition {other}"),
            }
        }
    }
    Ok(())
}

#[test]
fn compose_flags_exist_in_the_server_command_line() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let node_flags = flags_documented(&server_help("node")?);
    for id in NODE_IDS {
        let spec = node_spec(&compose, id)?;
        ensure!(spec.id == id);
        for flag in flags_used(&spec.command) {
            ensure!(
                node_flags.contains(&flag),
                "node{id} uses {flag}, which `agora-server node --help` does not list"
            );
        }
    }
    let certs_command = command(service(&compose, "certs")?)?;
    ensure!(
        certs_command.first().map(String::as_str) == Some("certs"),
        "the certs service does not run `agora-server certs`: {certs_command:?}"
    );
    let certs_flags = flags_documented(&server_help("certs")?);
    for flag in flags_used(&certs_command) {
        ensure!(
            certs_flags.contains(&flag),
            "certs uses {flag}, which `agora-server certs --help` does not list"
        );
    }
    let nodes: u64 = required_flag(&certs_command, "--nodes", "certs")?.parse()?;
    ensure!(
        nodes >= NODE_IDS.len() as u64,
        "certs makes {nodes} node certificates for {} nodes",
        NODE_IDS.len()
    );
    Ok(())
}

#[test]
fn certificate_files_are_the_ones_agora_server_certs_writes() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let certs = RealCerts::make(&compose)?;
    for id in NODE_IDS {
        for file in node_spec(&compose, id)?.cert_files {
            certs.check(&file, &node_service(id))?;
        }
    }

    // The init service presents the operator certificate to grpcurl.
    let init = service(&compose, "init")?;
    let script = command(init)?.join("\n");
    let grpcurl: Vec<String> = script.split_whitespace().map(str::to_owned).collect();
    for flag in ["-cacert", "-cert", "-key"] {
        let file = flag_value(&grpcurl, flag)
            .with_context(|| format!("the init script passes no {flag} to grpcurl"))?;
        certs.check(file, "init")?;
    }

    // The cluster file of the tools inside the network.
    let cluster = cluster_file(&compose)?;
    for file in [
        Some(&cluster.ca_cert),
        cluster.client_cert.as_ref(),
        cluster.client_key.as_ref(),
    ] {
        let file = file.context("the compose cluster file names no operator certificate")?;
        certs.check(file, "the compose cluster file")?;
    }
    Ok(())
}

fn cluster_file(compose: &Value) -> anyhow::Result<ClusterFile> {
    let text = compose
        .get("configs")
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("content"))
        .and_then(Value::as_str)
        .context("docker-compose.yml has no configs.cluster.content")?;
    Ok(ClusterFile::parse(text)?)
}

#[test]
fn bootstrap_and_cluster_file_name_the_nodes_as_they_announce_themselves() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let init = service(&compose, "init")?;
    let script = command(init)?.join("\n");
    let compact: String = script.chars().filter(|c| !c.is_whitespace()).collect();
    ensure!(
        compact.contains(INITIALIZE_RPC),
        "the init script does not call {INITIALIZE_RPC}"
    );
    let proto = read_text("proto/proto/agora/admin/v1/admin.proto")?;
    ensure!(
        proto.contains("package agora.admin.v1;")
            && proto.contains("service AdminService")
            && proto.contains("rpc Initialize(InitializeRequest)"),
        "admin.proto no longer defines {INITIALIZE_RPC}"
    );
    let depends = depends_on(init)?;
    let cluster = cluster_file(&compose)?;
    for id in NODE_IDS {
        let spec = node_spec(&compose, id)?;
        let member = format!(
            r#"{{"id":{id},"api_addr":"{}","raft_addr":"{}","voter":true}}"#,
            spec.advertise_api, spec.advertise_raft
        );
        ensure!(
            compact.contains(&member),
            "the init script does not bootstrap node {id} as {member}"
        );
        ensure!(
            depends.get(&node_service(id)).map(String::as_str) == Some("service_healthy"),
            "init must wait for node{id} to be healthy"
        );
        let listed = cluster
            .nodes
            .iter()
            .find(|n| n.id == id)
            .with_context(|| format!("the compose cluster file has no node {id}"))?;
        ensure!(listed.api_addr == spec.advertise_api);
        ensure!(listed.raft_addr == spec.advertise_raft);
        ensure!(
            listed.metrics_addr.as_deref()
                == Some(format!("{}:{}", node_service(id), spec.metrics_port).as_str())
        );
    }
    ensure!(cluster.nodes.len() == NODE_IDS.len());
    Ok(())
}

#[test]
fn prometheus_scrapes_every_node_metrics_port() -> anyhow::Result<()> {
    let compose = load_yaml("docker-compose.yml")?;
    let prometheus = service(&compose, "prometheus")?;
    let config_mount = mounts(prometheus)?
        .into_iter()
        .find(|m| m.target == PROMETHEUS_CONFIG)
        .context("the prometheus service does not mount its configuration")?;
    let source = config_mount
        .source
        .context("the prometheus configuration mount has no source")?;
    let source = source.trim_start_matches("./");
    let config = load_yaml(source)?;

    let mut targets = BTreeSet::new();
    let jobs = config
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .with_context(|| format!("{source} has no scrape_configs"))?;
    for job in jobs {
        ensure!(
            job.get("job_name").and_then(Value::as_str).is_some(),
            "a scrape config in {source} has no job_name"
        );
        let path = job
            .get("metrics_path")
            .and_then(Value::as_str)
            .unwrap_or("/metrics");
        for group in job
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for target in group
                .get("targets")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let target = target.as_str().context("a target is not a string")?;
                targets.insert((target.to_owned(), path.to_owned()));
            }
        }
    }

    for id in NODE_IDS {
        let spec = node_spec(&compose, id)?;
        let want = format!("{}:{}", node_service(id), spec.metrics_port);
        ensure!(
            targets.contains(&(want.clone(), "/metrics".to_owned())),
            "{source} does not scrape {want}/metrics: {targets:?}"
        );
        ensure!(
            container_ports(service(&compose, &node_service(id))?)?.contains(&spec.metrics_port),
            "node{id} does not expose its metrics port {}",
            spec.metrics_port
        );
    }
    // Any other target naming a node must be one of those (no stale ports).
    for (target, _) in &targets {
        let host = target.split(':').next().unwrap_or(target);
        if let Some(id) = host.strip_prefix("node") {
            let id: u64 = id.parse()?;
            let spec = node_spec(&compose, id)?;
            ensure!(
                port_of(target)? == spec.metrics_port,
                "{source} scrapes {target}, not node{id}'s metrics port {}",
                spec.metrics_port
            );
        }
    }
    Ok(())
}

/// The Dockerfile's instructions: `(KEYWORD, arguments)`, continuation
/// lines joined, comments dropped.
fn dockerfile_instructions() -> anyhow::Result<Vec<(String, String)>> {
    let text = read_text("Dockerfile")?;
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(start) = trimmed.strip_suffix('\\') {
            current.push_str(start);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    Ok(instructions)
}

#[test]
fn dockerfile_builds_in_stages_and_runs_unprivileged() -> anyhow::Result<()> {
    let instructions = dockerfile_instructions()?;
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    ensure!(
        stages.len() >= 2,
        "the Dockerfile has {} stage(s)",
        stages.len()
    );
    let last_stage = &instructions[stages[stages.len() - 1]..];
    let of = |keyword: &str| -> Vec<&str> {
        last_stage
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
            .collect()
    };

    let user = of("USER")
        .last()
        .map(|u| u.split(':').next().unwrap_or(u).to_owned())
        .context("the runtime stage sets no USER")?;
    ensure!(
        user != "root" && user != "0",
        "the runtime stage runs as {user}"
    );
    ensure!(
        of("ENTRYPOINT")
            .last()
            .is_some_and(|e| e.contains("agora-server")),
        "the entry point is not agora-server"
    );

    let build = instructions
        .iter()
        .filter(|(k, _)| k == "RUN")
        .find(|(_, args)| args.contains("cargo build"))
        .context("no stage runs cargo build")?;
    for package in [
        "agora-server",
        "agora-peer",
        "agora-admin",
        "agora-loadtest",
    ] {
        ensure!(
            build.1.contains(&format!("-p {package}")),
            "cargo build does not build {package}"
        );
    }
    ensure!(
        build.1.contains("--release"),
        "cargo build is not --release"
    );

    // The ports and data directory the compose file uses.
    let exposed: BTreeSet<u16> = of("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| port_number(p.split('/').next().unwrap_or(p), "EXPOSE"))
        .collect::<Result<_, _>>()?;
    let compose = load_yaml("docker-compose.yml")?;
    let volumes = of("VOLUME").join(" ");
    for id in NODE_IDS {
        let spec = node_spec(&compose, id)?;
        for port in [spec.api_port, spec.raft_port, spec.metrics_port] {
            ensure!(exposed.contains(&port), "the image does not EXPOSE {port}");
        }
        ensure!(
            volumes.contains(&spec.data_dir),
            "the image has no VOLUME for the data dir {}",
            spec.data_dir
        );
    }

    // The init service reads the operator key as the image's user.
    let uid = instructions
        .iter()
        .filter(|(k, _)| k == "RUN")
        .find_map(|(_, args)| {
            let words: Vec<&str> = args.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "useradd")?;
            let rest = &words[at..];
            rest.windows(2)
                .find(|w| w[0] == "--uid")
                .map(|w| w[1].to_owned())
        })
        .context("the Dockerfile makes no user with a fixed --uid")?;
    let init_user = service(&compose, "init")?
        .get("user")
        .and_then(scalar)
        .context("the init service sets no user")?;
    ensure!(
        init_user.split(':').next() == Some(uid.as_str()),
        "init runs as {init_user}, but the image's user is uid {uid}"
    );
    Ok(())
}

#[test]
fn port_parser_reads_every_short_form() -> anyhow::Result<()> {
    let parse = |text: &str| parse_port(&Value::String(text.to_owned()));
    assert_eq!(
        parse("127.0.0.1:7301:7301/tcp")?,
        PortMapping {
            host_ip: Some([127, 0, 0, 1].into()),
            host: Some(7301),
            container: 7301
        }
    );
    assert_eq!(
        parse("7102:7101")?,
        PortMapping {
            host_ip: None,
            host: Some(7102),
            container: 7101
        }
    );
    assert_eq!(parse("7101")?.host, None);
    assert!(parse("7101:http").is_err());
    assert!(parse("0:7101").is_err());
    assert!(parse("70000:7101").is_err());
    assert!(parse("localhost:7101:7101").is_err());
    assert!(parse("7101:7101/sctp").is_err());
    Ok(())
}
