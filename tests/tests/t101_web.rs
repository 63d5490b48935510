//! The web dashboard (`agora-admin serve`) against a real three-node
//! cluster, as a real process on port 0.
//!
//! The HTTP API: refused without a session (401), a plain user's sign-in
//! refused (403, saying why), POSTs without the dashboard's header refused,
//! an admin's sign-in gives an HttpOnly, SameSite=Strict cookie that opens
//! the API, and signing out closes it. Every node's `/metrics` page parses
//! as Prometheus text, and the shipped Grafana dashboard queries only
//! metrics that exist. Then a real headless Chromium loads the page, signs
//! in, sees three nodes and the leader, finds and suspends a user (the
//! cluster has it suspended), and sees the killed follower's row turn
//! unreachable; a screenshot is saved in `target/test-artifacts/`.
//!
//! Without `/usr/bin/chromium` the browser part is skipped with a line
//! saying so, unless `AGORA_REQUIRE_BROWSER=1` (CI sets it), which makes
//! it fail instead.
//!
//! Needs the binaries: `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_peer::account;
use agora_tests::{binary, wait_for, Probe, TestCluster, TestOptions};
use anyhow::{bail, ensure, Context as _};
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const ADMIN: &str = "root";
const ADMIN_PASSWORD: &str = "operator password 1";
const USER: &str = "alice";
const USER_PASSWORD: &str = "alice password 1";
/// Where Debian's chromium package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Set to 1 to make a missing browser a failure instead of a skip.
const REQUIRE_BROWSER_ENV: &str = "AGORA_REQUIRE_BROWSER";
/// Longest the console may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one HTTP call may take (a sign-in runs OPAQUE with Argon2).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the page may take to show what the test waits for; the page
/// polls every second, and a killed node costs at most the console's
/// per-node timeout.
const PAGE_TIMEOUT: Duration = Duration::from_secs(40);
/// The dashboard's CSRF header.
const CSRF_HEADER: &str = "x-agora-console";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A running `agora-admin serve`, killed when dropped.
struct Console {
    child: tokio::process::Child,
    base: String,
}

impl Console {
    async fn start(cluster_file: &Path, home: &Path) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(binary("agora-admin")?)
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--data-dir")
            .arg(home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("AGORA_CLUSTER")
            .env_remove("AGORA_ADMIN_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("could not start agora-admin serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("agora-admin serve exited without printing its address")
        })
        .await
        .context("agora-admin serve did not print its address in time")??;
        // Keep reading so the console never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, base })
    }
}

/// One HTTP answer.
struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    body: Value,
}

async fn call(
    http: &HttpClient,
    console: &Console,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
    csrf: bool,
) -> anyhow::Result<Answer> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", console.base));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if csrf {
        request = request.header(CSRF_HEADER, "1");
    }
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(value.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, http.request(request.body(body)?))
        .await
        .with_context(|| format!("{path} did not answer in time"))??;
    let status = response.status();
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        set_cookie,
        body,
    })
}

/// The Grafana dashboard shipped in `deploy/grafana/` must be JSON with
/// panels, and every `agora_*` metric its queries name must exist: on a
/// node's page now, or (metrics that appear with their first event, like
/// audit failures) in the server's source.
fn check_grafana_dashboard(seen: &std::collections::BTreeSet<String>) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("deploy/grafana/agora-dashboard.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("{} is missing", path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", path.display()))?;
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    ensure!(!panels.is_empty(), "the dashboard has no panels");
    let mut source = String::new();
    let mut dirs = vec![root.join("server/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(&path)?);
            }
        }
    }
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .context("a panel without targets")?;
        for target in targets {
            let expr = target["expr"].as_str().context("a target without expr")?;
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("agora_") {
                    continue;
                }
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                ensure!(
                    seen.contains(word)
                        || seen.contains(family)
                        || source.contains(&format!("\"{family}\"")),
                    "panel {title:?} queries {word}, which no node exports"
                );
            }
        }
    }
    Ok(())
}

/// GETs `url` and answers its body as text.
async fn fetch_text(http: &HttpClient, url: &str) -> anyhow::Result<String> {
    let request = Request::get(url).body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(HTTP_TIMEOUT, http.request(request))
        .await
        .with_context(|| format!("{url} did not answer in time"))??;
    ensure!(
        response.status() == StatusCode::OK,
        "{url}: {}",
        response.status()
    );
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(bytes.to_vec())?)
}

/// Checks a page against the Prometheus text exposition format (0.0.4)
/// as strictly as Prometheus parses it: well-formed names, labels and
/// values; one `# TYPE` per family, before its samples; each family's
/// lines together; no series twice; counters not negative; histograms
/// with `le` buckets that grow up to a `+Inf` bucket equal to `_count`.
/// Answers the families seen.
fn check_exposition(page: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};

    fn valid_name(name: &str, colons: bool) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
    }
    fn parse_value(text: &str) -> Option<f64> {
        match text {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            other => other.parse().ok(),
        }
    }
    /// `{a="x",b="y"}` into pairs; None when malformed.
    fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
        let mut labels = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let eq = rest.find('=')?;
            let name = &rest[..eq];
            if !valid_name(name, false) || name.starts_with("__") {
                return None;
            }
            let mut value = String::new();
            let mut chars = rest[eq + 1..].char_indices();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut end = None;
            let mut escaped = false;
            for (i, c) in chars {
                if escaped {
                    match c {
                        '\\' | '"' => value.push(c),
                        'n' => value.push('\n'),
                        _ => return None,
                    }
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(eq + 1 + i);
                    break;
                } else {
                    value.push(c);
                }
            }
            let end = end?;
            labels.push((name.to_owned(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        Some(labels)
    }

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series: BTreeSet<String> = BTreeSet::new();
    // Histogram family -> label set (without le) -> (buckets, count).
    /// One histogram series: its `(le, count)` buckets and its `_count`.
    type Buckets = (Vec<(f64, f64)>, Option<f64>);
    let mut histograms: BTreeMap<String, BTreeMap<String, Buckets>> = BTreeMap::new();
    for (n, line) in page.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if words.first() == Some(&"TYPE") {
                let [_, name, kind] = words[..] else {
                    bail!("{}: a malformed TYPE", at())
                };
                ensure!(valid_name(name, true), "{}: a bad metric name", at());
                ensure!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{}: unknown type",
                    at()
                );
                ensure!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "{}: a second TYPE for {name}",
                    at()
                );
                ensure!(
                    !finished.contains(name),
                    "{}: TYPE after {name}'s samples",
                    at()
                );
            }
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').with_context(at)?;
                let labels = parse_labels(&line[open + 1..close])
                    .with_context(|| format!("{}: malformed labels", at()))?;
                (&line[..open], labels, &line[close + 1..])
            }
            None => {
                let space = line.find(' ').with_context(at)?;
                (&line[..space], Vec::new(), &line[space..])
            }
        };
        ensure!(valid_name(name, true), "{}: a bad metric name", at());
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .with_context(|| format!("{}: no value", at()))?;
        if let Some(timestamp) = fields.next() {
            ensure!(
                timestamp.parse::<i64>().is_ok(),
                "{}: a bad timestamp",
                at()
            );
        }
        ensure!(fields.next().is_none(), "{}: trailing text", at());
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
            })
            .unwrap_or(name)
            .to_owned();
        if current.as_deref() != Some(family.as_str()) {
            ensure!(
                !finished.contains(&family),
                "{}: {family}'s lines are not together",
                at()
            );
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        let mut sorted = labels.clone();
        sorted.sort();
        ensure!(
            series.insert(format!("{name}{sorted:?}")),
            "{}: the same series twice",
            at()
        );
        let kind = types.get(&family).map_or("untyped", String::as_str);
        if kind == "counter" {
            ensure!(value >= 0.0, "{}: a negative counter", at());
        }
        if kind == "histogram" {
            let key = format!(
                "{:?}",
                sorted.iter().filter(|(k, _)| k != "le").collect::<Vec<_>>()
            );
            let entry = histograms
                .entry(family.clone())
                .or_default()
                .entry(key)
                .or_default();
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .and_then(|(_, v)| parse_value(v))
                    .with_context(|| format!("{}: a bucket without le", at()))?;
                entry.0.push((le, value));
            } else if name.ends_with("_count") {
                entry.1 = Some(value);
            }
        }
    }
    for (family, sets) in &histograms {
        for (labels, (buckets, count)) in sets {
            let mut sorted = buckets.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            ensure!(
                sorted.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{labels}: bucket counts go down"
            );
            let inf = sorted
                .last()
                .filter(|(le, _)| le.is_infinite())
                .with_context(|| format!("{family}{labels}: no +Inf bucket"))?;
            ensure!(
                Some(inf.1) == *count,
                "{family}{labels}: +Inf bucket differs from _count"
            );
        }
    }
    if let Some(last) = current {
        finished.insert(last);
    }
    Ok(finished)
}

/// `target/test-artifacts`, beside the running test's profile directory.
fn artifacts_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .ancestors()
        .nth(3)
        .context("the test does not run from a cargo target directory")?;
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_signs_in_admins_only_and_shows_a_dead_node() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, TestOptions::default()).await?;
    let leader = cluster.wait_for_leader(None).await?;
    let cluster_file = cluster.write_cluster_file()?;
    // The operator certificate makes the first admin, as `dev` does.
    let operator = cluster.client();
    let admin = account::register(&operator, ADMIN, ADMIN_PASSWORD.as_bytes(), true).await?;
    let user = account::register(&operator, USER, USER_PASSWORD.as_bytes(), false).await?;
    cluster
        .wait_applied(leader, admin.index.max(user.index))
        .await?;

    let home = cluster.dir().join("console-home");
    let console = Console::start(&cluster_file, &home).await?;
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // No session, no API; the page itself is public.
    let page = call(&http, &console, Method::GET, "/", None, None, false).await?;
    ensure!(page.status == StatusCode::OK, "the page: {}", page.status);
    for path in ["/api/overview", "/api/history", "/api/audit", "/api/events"] {
        let answer = call(&http, &console, Method::GET, path, None, None, false).await?;
        ensure!(
            answer.status == StatusCode::UNAUTHORIZED,
            "{path} without a session answered {}: {}",
            answer.status,
            answer.body
        );
    }
    let forged = call(
        &http,
        &console,
        Method::GET,
        "/api/overview",
        Some("agora_console=forged"),
        None,
        false,
    )
    .await?;
    ensure!(
        forged.status == StatusCode::UNAUTHORIZED,
        "a forged cookie: {}",
        forged.status
    );

    // A POST without the dashboard's header is refused before anything runs.
    let login_body = json!({ "username": ADMIN, "password": ADMIN_PASSWORD });
    let no_header = call(
        &http,
        &console,
        Method::POST,
        "/api/login",
        None,
        Some(login_body.clone()),
        false,
    )
    .await?;
    ensure!(
        no_header.status == StatusCode::FORBIDDEN && no_header.set_cookie.is_none(),
        "a sign-in without the header: {} {}",
        no_header.status,
        no_header.body
    );

    // A plain user is refused, saying why, and gets no cookie.
    let plain = call(
        &http,
        &console,
        Method::POST,
        "/api/login",
        None,
        Some(json!({ "username": USER, "password": USER_PASSWORD })),
        true,
    )
    .await?;
    ensure!(
        plain.status == StatusCode::FORBIDDEN && plain.set_cookie.is_none(),
        "a plain user's sign-in: {} {}",
        plain.status,
        plain.body
    );
    let why = plain.body["error"].as_str().unwrap_or_default();
    ensure!(why.contains("alice is not an admin"), "{why}");

    let wrong = call(
        &http,
        &console,
        Method::POST,
        "/api/login",
        None,
        Some(json!({ "username": ADMIN, "password": "not it" })),
        true,
    )
    .await?;
    ensure!(
        wrong.status == StatusCode::UNAUTHORIZED && wrong.set_cookie.is_none(),
        "a wrong password: {} {}",
        wrong.status,
        wrong.body
    );

    // The admin gets a cookie the page's scripts cannot read.
    let signed = call(
        &http,
        &console,
        Method::POST,
        "/api/login",
        None,
        Some(login_body),
        true,
    )
    .await?;
    ensure!(
        signed.status == StatusCode::OK,
        "the admin's sign-in: {} {}",
        signed.status,
        signed.body
    );
    let set_cookie = signed.set_cookie.context("no session cookie")?;
    ensure!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie
        .split(';')
        .next()
        .context("an empty cookie")?
        .to_owned();
    let overview = call(
        &http,
        &console,
        Method::GET,
        "/api/overview",
        Some(&cookie),
        None,
        false,
    )
    .await?;
    ensure!(overview.status == StatusCode::OK, "{}", overview.body);
    ensure!(
        overview.body["nodes"].as_array().map(Vec::len) == Some(3),
        "{}",
        overview.body
    );
    ensure!(
        overview.body["leader_id"].as_u64().is_some(),
        "{}",
        overview.body
    );
    // A signed-in browser still cannot POST without the header.
    let csrf = call(
        &http,
        &console,
        Method::POST,
        "/api/settings",
        Some(&cookie),
        Some(json!({ "name": "commission_bps", "value": "100" })),
        false,
    )
    .await?;
    ensure!(
        csrf.status == StatusCode::FORBIDDEN,
        "a POST without the header: {}",
        csrf.status
    );
    let standing = call(
        &http,
        &console,
        Method::GET,
        "/api/users/alice",
        Some(&cookie),
        None,
        false,
    )
    .await?;
    ensure!(
        standing.status == StatusCode::OK && standing.body["suspended"] == false,
        "{}",
        standing.body
    );

    // Signing out ends the session: the same cookie opens nothing after.
    let out = call(
        &http,
        &console,
        Method::POST,
        "/api/logout",
        Some(&cookie),
        Some(json!({})),
        true,
    )
    .await?;
    ensure!(
        out.status == StatusCode::OK
            && out
                .set_cookie
                .as_deref()
                .is_some_and(|c| c.contains("Max-Age=0")),
        "sign-out: {} {:?}",
        out.status,
        out.set_cookie
    );
    let after = call(
        &http,
        &console,
        Method::GET,
        "/api/overview",
        Some(&cookie),
        None,
        false,
    )
    .await?;
    ensure!(
        after.status == StatusCode::UNAUTHORIZED,
        "after sign-out: {}",
        after.status
    );

    // Every node's /metrics page is what Prometheus accepts, and the
    // shipped scrape configuration exists.
    let mut seen_families = std::collections::BTreeSet::new();
    for id in cluster.node_ids() {
        let addr = cluster
            .node(id)?
            .metrics_addr
            .clone()
            .with_context(|| format!("node {id} announced no metrics address"))?;
        let page = fetch_text(&http, &format!("http://{addr}/metrics")).await?;
        let families = check_exposition(&page)
            .with_context(|| format!("node {id}'s /metrics is not valid Prometheus text"))?;
        for wanted in [
            "agora_raft_term",
            "agora_raft_is_leader",
            "agora_rpc_requests_total",
        ] {
            ensure!(
                families.contains(wanted),
                "node {id}'s /metrics lacks {wanted}"
            );
        }
        seen_families.extend(families);
    }
    check_grafana_dashboard(&seen_families)?;
    let scrape_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus.yml");
    let scrape_config = std::fs::read_to_string(&scrape_config)
        .with_context(|| format!("{} is missing", scrape_config.display()))?;
    ensure!(
        scrape_config.contains("metrics_path: /metrics"),
        "deploy/prometheus.yml does not scrape /metrics"
    );

    // The browser.
    if !Path::new(CHROMIUM).exists() {
        if std::env::var(REQUIRE_BROWSER_ENV).is_ok_and(|v| v == "1") {
            bail!("{CHROMIUM} is missing and {REQUIRE_BROWSER_ENV}=1: install it with `apt-get install -y chromium`");
        }
        println!("SKIPPED the browser part of t101_web: {CHROMIUM} is missing (apt-get install -y chromium; set {REQUIRE_BROWSER_ENV}=1 to make this a failure)");
        return Ok(());
    }
    let browser_dir = tempfile::tempdir()?;
    let (browser, tab) = {
        let url = console.base.clone();
        let profile = browser_dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || sign_in(&url, &profile)).await??
    };
    let seen_leader = {
        let tab = tab.clone();
        tokio::task::spawn_blocking(move || {
            wait_page(&tab, "three nodes and a leader", |tab| {
                let rows = table_states(tab)?;
                let leaders: Vec<u64> = rows
                    .iter()
                    .filter(|(_, state)| state == "leader")
                    .map(|(id, _)| *id)
                    .collect();
                Ok((rows.len() == 3 && leaders.len() == 1).then(|| leaders[0]))
            })
        })
        .await??
    };
    let leader = cluster.wait_for_leader(None).await?;
    ensure!(
        seen_leader == leader,
        "the page says node {seen_leader} leads, the cluster says {leader}"
    );

    // A user action through the page: find alice, open her, suspend her.
    {
        let tab = tab.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            tab.wait_for_element("#form-user input[name=q]")?.click()?;
            tab.type_str("ali")?;
            tab.press_key("Enter")?;
            wait_page(&tab, "alice's details", |tab| {
                let text = eval_string(tab, "document.getElementById('user-info').innerText")?;
                Ok(text.contains("alice").then_some(()))
            })?;
            tab.wait_for_element("#user-suspend")?.click()?;
            wait_page(&tab, "alice shown suspended", |tab| {
                let text = eval_string(tab, "document.getElementById('users-result').innerText")?;
                Ok(text.contains("alice is suspended").then_some(()))
            })?;
            // The leader's own log file, through the page.
            tab.wait_for_element("#form-log input[name=id]")?.click()?;
            tab.type_str(&seen_leader.to_string())?;
            tab.press_key("Enter")?;
            wait_page(&tab, "the leader's log lines", |tab| {
                let text = eval_string(tab, "document.getElementById('log').innerText")?;
                let failed = eval_string(
                    tab,
                    "document.getElementById('log-result').className.includes('bad') ? document.getElementById('log-result').innerText : ''",
                )?;
                if !failed.is_empty() {
                    bail!("the page could not show the log: {failed}");
                }
                Ok((!text.trim().is_empty()).then_some(()))
            })
        })
        .await??;
    }
    // Any node answers; a follower may apply the change a moment later.
    wait_for("alice suspended on the cluster", PAGE_TIMEOUT, || async {
        let standing = agora_peer::ledger::standing(&operator, USER).await?;
        Ok(if standing.suspended {
            Probe::Ready(())
        } else {
            Probe::NotYet(format!("{standing:?}"))
        })
    })
    .await?;

    let victim = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .context("no follower")?;
    cluster.kill(victim)?;
    let artifact = artifacts_dir()?.join("dashboard.png");
    {
        let tab = tab.clone();
        let artifact = artifact.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            wait_page(&tab, "the killed node flagged unreachable", |tab| {
                let rows = table_states(tab)?;
                Ok(rows
                    .iter()
                    .any(|(id, state)| *id == victim && state == "unreachable")
                    .then_some(()))
            })?;
            // The cluster's replicated event log is shown (the election at
            // least), and the console's sampler notices the dead node too.
            wait_page(&tab, "the cluster's event log", |tab| {
                let kinds = eval_string(
                    tab,
                    "String(document.querySelectorAll('#events li[data-kind]').length)",
                )?;
                Ok((kinds != "0").then_some(()))
            })?;
            wait_page(
                &tab,
                "the event of the node that stopped answering",
                |tab| {
                    let text = eval_string(tab, "document.getElementById('observed').innerText")?;
                    Ok(text
                        .contains(&format!("node {victim} stopped answering"))
                        .then_some(()))
                },
            )?;
            let png =
                tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)?;
            std::fs::write(&artifact, png)?;
            Ok(())
        })
        .await??;
    }
    println!("dashboard screenshot: {}", artifact.display());
    drop(tab);
    drop(browser);

    // SIGTERM stops the console cleanly.
    let mut console = console;
    let pid = console.child.id().context("the console has no pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(START_TIMEOUT, console.child.wait())
        .await
        .context("the console did not stop on SIGTERM")??;
    ensure!(status.success(), "the console exited with {status}");
    Ok(())
}

/// Starts Chromium, opens the dashboard and signs in as the admin.
fn sign_in(url: &str, profile: &Path) -> anyhow::Result<(Browser, Arc<Tab>)> {
    let args: Vec<&std::ffi::OsStr> = [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-default-browser-check",
    ]
    .iter()
    .map(std::ffi::OsStr::new)
    .collect();
    let options = LaunchOptions {
        headless: true,
        sandbox: false,
        path: Some(PathBuf::from(CHROMIUM)),
        user_data_dir: Some(profile.to_path_buf()),
        window_size: Some((1440, 1100)),
        args,
        idle_browser_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    };
    let browser = Browser::new(options).context("could not start Chromium")?;
    let tab = browser.new_tab()?;
    tab.set_default_timeout(PAGE_TIMEOUT);
    tab.navigate_to(url)?.wait_until_navigated()?;
    tab.wait_for_element("#login-username")?.click()?;
    tab.type_str(ADMIN)?;
    tab.wait_for_element("#login-password")?.click()?;
    tab.type_str(ADMIN_PASSWORD)?;
    tab.press_key("Enter")?;
    wait_page(&tab, "the dashboard after signing in", |tab| {
        let shown = eval_string(
            tab,
            "String(!document.getElementById('dashboard').hidden) + ' ' + document.getElementById('login-error').textContent",
        )?;
        if let Some(error) = shown.strip_prefix("false ").filter(|e| !e.is_empty()) {
            bail!("the page refused the admin's sign-in: {error}");
        }
        Ok(shown.starts_with("true").then_some(()))
    })?;
    Ok((browser, tab))
}

/// The node table as `(node id, state)` pairs.
fn table_states(tab: &Tab) -> anyhow::Result<Vec<(u64, String)>> {
    let text = eval_string(
        tab,
        "JSON.stringify([...document.querySelectorAll('#nodes-body tr')].map(r => [Number(r.dataset.nodeId), r.dataset.state]))",
    )?;
    Ok(serde_json::from_str(&text)?)
}

fn eval_string(tab: &Tab, expression: &str) -> anyhow::Result<String> {
    let value = tab.evaluate(expression, false)?.value;
    match value {
        Some(Value::String(text)) => Ok(text),
        other => bail!("`{expression}` gave {other:?}"),
    }
}

/// Polls the page with `probe` until it gives a value, for at most
/// [`PAGE_TIMEOUT`].
fn wait_page<T>(
    tab: &Tab,
    what: &str,
    probe: impl Fn(&Tab) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        if let Some(value) = probe(tab)? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            let table = table_states(tab)
                .map(|t| format!("{t:?}"))
                .unwrap_or_default();
            // What the page looked like, for whoever reads the failure.
            if let (Ok(png), Ok(dir)) = (
                tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true),
                artifacts_dir(),
            ) {
                let _ = std::fs::write(dir.join("dashboard-failure.png"), png);
            }
            bail!("the page did not show {what} within {PAGE_TIMEOUT:?} (screenshot: target/test-artifacts/dashboard-failure.png); the table: {table}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_exposition_check_catches_what_prometheus_refuses() {
    let good = "# TYPE a_total counter\na_total{m=\"x\\\"y\"} 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\ng 1.5e3\n";
    let families = check_exposition(good).expect("a valid page");
    assert_eq!(
        families.into_iter().collect::<Vec<_>>(),
        ["a_total", "g", "h"]
    );
    for bad in [
        "a{m=\"x\"} 1\na{m=\"x\"} 2\n", // the same series twice
        "a 1\nb 1\na 2\n",              // a family split up
        "# TYPE a counter\na -1\n",     // a negative counter
        "a{m=x} 1\n",                   // an unquoted label value
        "9a 1\n",                       // a bad name
        "a one\n",                      // not a number
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", // no +Inf bucket
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
    }
}
