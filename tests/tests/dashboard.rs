//! The dashboard end to end: two `edge-node serve` members and `edge-coord serve --stages 2` on 127.0.0.1, the
//! page opened in headless Chromium. The DOM after the scripts ran must show the model, both nodes and the plan's
//! layer ranges, and the reply the `#ask=` deep link streamed must equal the API's non-streamed greedy answer to
//! the same request; the screenshot must be a real rendering with both stage colors of the plan bar. A second
//! server with `--api-key` checks the page's key flow (401, the key field, localStorage, the chat with the key), and
//! a third with `--replicas 2` the replica buttons (one per replica, each drawing its own plan).
//!
//! Chromium is driven two ways: `--dump-dom` with a virtual-time budget (the way a script would use it; virtual time
//! waits for pending requests but not for a streamed body, so it cannot see a whole streamed reply), and the
//! DevTools protocol over `--remote-debugging-pipe`, which waits for the reply in real time (bounded) before it
//! reads the DOM and takes the screenshot. Chromium must be installed (`scripts/setup.sh` installs Debian's
//! `chromium`; `$EDGE_CHROMIUM` picks another): without it this test fails, it does not skip. The screenshot, the
//! DOM and the servers' logs are kept in the directory the test prints (`artifacts: …`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use edge_tests::{new_key, temp_dir, Node, NodeSpec, Server, TempDir};
use serde_json::{json, Value};

/// What the deep link asks (greedy, a few tokens: deterministic and quick).
const ASK: &str = "Say hello";
const MAX_TOKENS: u32 = 12;
/// The plan bar's stage colors (`--stage-1`, `--stage-2` in coordinator/static/dashboard.css).
const STAGE_1: [u8; 3] = [0xe8, 0x59, 0x0c];
const STAGE_2: [u8; 3] = [0x1c, 0x7e, 0xd6];
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;

#[test]
fn the_dashboard_shows_the_cluster_and_streams_a_chat_reply_in_chromium() {
    let chromium = chromium();
    // Kept (small): the screenshot, the DOM, the servers' logs. Chromium's profiles go to a removed directory.
    let out = temp_dir("dashboard");
    println!("artifacts: {}", out.display());
    let profiles = TempDir(temp_dir("dashboard-profiles"));
    let key = new_key();
    // wgpu (lavapipe on machines without a GPU): much faster tokens than the CPU reference.
    let a = Node::start(&key, NodeSpec { backend: Some("wgpu"), ..Default::default() });
    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], backend: Some("wgpu"), ..Default::default() });

    // ---- An open server.
    let server = Server::start_logged(&key, &[&a, &b], &["--stages", "2"], Some(&out.join("serve-open.log")));
    let http = Http::new(None);
    let status = http.get_json(&format!("{}/api/status", server.url));
    let model_id = status["model"]["id"].as_str().expect("model.id").to_string();
    let stages = status["plan"]["stages"].as_array().expect("a plan").clone();
    assert_eq!(stages.len(), 2, "--stages 2: {status:#}");
    let ranges: Vec<String> = stages
        .iter()
        .map(|s| format!("{}\u{2013}{}", s["layers"][0].as_u64().unwrap(), s["layers"][1].as_u64().unwrap()))
        .collect();
    assert_eq!(stages[1]["layers"][1], status["model"]["layers"], "the stages cover the model");
    let names: Vec<String> = [&a, &b]
        .iter()
        .map(|n| {
            let node = status["nodes"].as_array().unwrap().iter().find(|x| x["id"] == n.peer_id.as_str());
            node.unwrap_or_else(|| panic!("node {} not in the status: {status:#}", n.peer_id))["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // The page and its files are served as the router says.
    let (code, headers, page) = http.get(&format!("{}/dashboard", server.url));
    assert_eq!(code, 200);
    assert!(headers.contains("text/html; charset=utf-8") && headers.contains("no-cache"), "{headers}");
    assert!(page.contains("dashboard.js"), "{page}");

    // What the API answers, not streamed, to the request the deep link will make (streamed).
    let request = json!({
        "model": model_id,
        "messages": [{"role": "user", "content": ASK}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    });
    let answer = http.post_json(&format!("{}/v1/chat/completions", server.url), &request);
    let want = answer["choices"][0]["message"]["content"].as_str().expect("content").to_string();
    assert!(!want.trim().is_empty(), "the model said nothing: {answer:#}");
    println!("non-streamed reply: {want:?}");

    // 1. Chromium's command line: the DOM once the status arrived (virtual time waits for the fetch).
    let dom = dump_dom(&chromium, &format!("{}/", server.url), &profiles.0.join("cli"));
    std::fs::write(out.join("dump-dom.html"), &dom).unwrap();
    for want in names.iter().chain(&ranges).chain([&model_id]) {
        assert!(dom.contains(want.as_str()), "--dump-dom lacks {want:?}:\n{dom}");
    }

    // 2. DevTools: the deep link sends ASK once; wait for the streamed reply, then read the DOM and screenshot.
    let mut browser = Browser::launch(&chromium, &profiles.0.join("cdp"));
    let tab = browser.open();
    let ask = format!("{}/#ask={}&max_tokens={MAX_TOKENS}&temperature=0", server.url, ASK.replace(' ', "%20"));
    browser.call("Page.navigate", json!({"url": ask}), Some(&tab));
    let state = browser.wait_for(
        &tab,
        // Done (and the status polled after it lists the chat's job, newest first, as done), or failed.
        "(() => { const r = document.querySelector('[data-reply=\"1\"]');
                  if (!r || r.dataset.state === 'streaming') return null;
                  if (r.dataset.state !== 'done') return r.dataset.state;
                  const jobs = document.querySelectorAll('#jobs .pillbox');
                  return document.querySelectorAll('#planbar .seg').length > 0 && jobs.length >= 2
                      && jobs[0].textContent === 'done' ? 'done' : null; })()",
        Duration::from_secs(180),
    );
    let reply = browser.eval(&tab, "document.querySelector('[data-reply=\"1\"]').textContent");
    assert_eq!(state, "done", "the chat failed: {reply}\n{}", browser.diagnostics());
    let reply = reply.as_str().unwrap().to_string();
    println!("streamed reply:     {reply:?}");
    assert!(!reply.is_empty());
    assert_eq!(reply, want, "the streamed reply differs from the non-streamed greedy one");
    let hash = browser.eval(&tab, "location.hash");
    assert_eq!(hash, "", "the deep link is dropped from the address once sent");

    let dom = browser.eval(&tab, "document.documentElement.outerHTML").as_str().unwrap().to_string();
    std::fs::write(out.join("dashboard.html"), &dom).unwrap();
    for want in names.iter().chain(&ranges).chain([&model_id]) {
        assert!(dom.contains(want.as_str()), "the DOM lacks {want:?}:\n{dom}");
    }
    let asks = dom.matches(&format!(">{ASK}<")).count();
    assert_eq!(asks, 1, "the question is shown once (sent once):\n{dom}");
    // The topology has a box per node and a labeled edge per measured link; the plan bar a segment per stage.
    let counts = browser.eval(
        &tab,
        "[document.querySelectorAll('#topology .box').length, document.querySelectorAll('#topology .pill-text').length,
          document.querySelectorAll('#planbar .seg').length]",
    );
    assert_eq!(counts, json!([2, 2, 2]), "{}", browser.diagnostics());

    let png = browser.screenshot(&tab);
    let shot = out.join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    check_screenshot(&png, &shot);
    assert!(browser.exceptions().is_empty(), "script errors: {}", browser.diagnostics());
    drop(browser);
    drop(server);

    // ---- A server with an API key: the page is public, the API is not; the page asks for the key.
    let api_key = "test-key-7f3e";
    let args = ["--stages", "2", "--api-key", api_key];
    let server = Server::start_logged(&key, &[&a, &b], &args, Some(&out.join("serve-key.log")));
    let (code, _, _) = http.get(&format!("{}/api/status", server.url));
    assert_eq!(code, 401, "/api/status without the key");
    let (code, _, _) = http.get(&format!("{}/", server.url));
    assert_eq!(code, 200, "the page needs no key");
    let with_key = Http::new(Some(api_key));
    let answer = with_key.post_json(&format!("{}/v1/chat/completions", server.url), &request);
    assert_eq!(answer["choices"][0]["message"]["content"], want.as_str(), "same plan shape, same greedy answer");

    let mut browser = Browser::launch(&chromium, &profiles.0.join("cdp-key"));
    let tab = browser.open();
    let ask = format!("{}/#ask={}&max_tokens={MAX_TOKENS}&temperature=0", server.url, ASK.replace(' ', "%20"));
    browser.call("Page.navigate", json!({"url": ask}), Some(&tab));
    // The deep link's request is refused: the key bar shows, the question goes back into the box.
    let refused = browser.wait_for(
        &tab,
        "(() => { const r = document.querySelector('[data-reply=\"1\"]');
                  return !document.getElementById('keybar').hidden && r && r.dataset.state === 'failed'
                      ? document.getElementById('chat-input').value : null; })()",
        Duration::from_secs(60),
    );
    assert_eq!(refused, ASK, "{}", browser.diagnostics());
    let nodes_shown = browser.eval(&tab, "document.querySelectorAll('#nodes tr b').length");
    assert_eq!(nodes_shown, 0, "no status without the key");
    // Enter the key the way a user does; the status shows and the question can be sent again.
    browser.eval(
        &tab,
        &format!(
            "document.getElementById('key-input').value = {:?};
             document.getElementById('keybar').requestSubmit(); true",
            api_key
        ),
    );
    browser.wait_for(&tab, "document.querySelectorAll('#planbar .seg').length === 2 || null", Duration::from_secs(30));
    assert_eq!(browser.eval(&tab, "localStorage.getItem('edge-infer.api-key')"), api_key);
    assert_eq!(browser.eval(&tab, "document.getElementById('keybar').hidden"), true);
    browser.eval(&tab, "document.getElementById('chat-form').requestSubmit(); true");
    let state = browser.wait_for(
        &tab,
        "(() => { const r = document.querySelector('[data-reply=\"2\"]');
                  return r && r.dataset.state !== 'streaming' ? r.dataset.state : null; })()",
        Duration::from_secs(120),
    );
    let reply = browser.eval(&tab, "document.querySelector('[data-reply=\"2\"]').textContent");
    assert_eq!(state, "done", "{reply}\n{}", browser.diagnostics());
    assert_eq!(reply, want.as_str());
    // A reload keeps the key (localStorage): the status shows without asking.
    browser.call("Page.reload", json!({}), Some(&tab));
    browser.wait_for(
        &tab,
        "!document.querySelector('[data-reply]') && document.querySelectorAll('#planbar .seg').length === 2
         && document.getElementById('keybar').hidden || null",
        Duration::from_secs(30),
    );
    assert!(browser.exceptions().is_empty(), "script errors: {}", browser.diagnostics());
    drop(browser);
    drop(server);

    // ---- Two replicas, one node each: a button per replica; the plan bar shows the chosen replica's plan.
    let args = ["--replicas", "2", "--tensor-parallel", "off"];
    let server = Server::start_logged(&key, &[&a, &b], &args, Some(&out.join("serve-replicas.log")));
    let status = http.get_json(&format!("{}/api/status", server.url));
    let replica_node = |i: usize| {
        let id = status["replicas"][i]["plan"]["stages"][0]["members"][0]["node"].as_str().expect("a plan");
        let node = status["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).expect("its node");
        node["name"].as_str().unwrap().to_string()
    };
    let (first, second) = (replica_node(0), replica_node(1));
    assert_ne!(first, second, "{status:#}");
    let mut browser = Browser::launch(&chromium, &profiles.0.join("cdp-replicas"));
    let tab = browser.open();
    browser.call("Page.navigate", json!({"url": format!("{}/", server.url)}), Some(&tab));
    let shown = "(() => { const b = document.querySelectorAll('#replicas button');
                          const who = document.querySelector('#planbar .seg .who');
                          return b.length === 2 && who ? [...b].map((x) => x.textContent).concat(who.textContent) : null; })()";
    let buttons = browser.wait_for(&tab, shown, Duration::from_secs(30));
    let texts: Vec<&str> = buttons.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(texts[0].starts_with("replica 1: 1 stage") && texts[1].starts_with("replica 2: 1 stage"), "{texts:?}");
    assert!(texts[2].contains(&first), "replica 1's node {first} is drawn: {texts:?}");
    browser.eval(&tab, "document.querySelectorAll('#replicas button')[1].click(); true");
    let who = browser.wait_for(
        &tab,
        &format!("document.querySelector('#planbar .seg .who').textContent.includes({second:?}) || null"),
        Duration::from_secs(10),
    );
    assert_eq!(who, true, "replica 2's node {second} is drawn after its button is clicked");
    assert!(browser.exceptions().is_empty(), "script errors: {}", browser.diagnostics());
}

/// `chromium` (or `$EDGE_CHROMIUM`). Fails, never skips, when it is missing.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGE_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "EDGE_CHROMIUM={} is not a file", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is not installed: run `bash scripts/setup.sh` (it installs Debian's `chromium` package)");
}

/// A small HTTP client (bounded waits), with an optional API key.
struct Http {
    agent: ureq::Agent,
    key: Option<String>,
}

impl Http {
    fn new(key: Option<&str>) -> Http {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            .build()
            .into();
        Http { agent, key: key.map(str::to_string) }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.key {
            Some(k) => req.header("Authorization", &format!("Bearer {k}")),
            None => req,
        }
    }

    /// (status, headers as text, body).
    fn get(&self, url: &str) -> (u16, String, String) {
        let mut res = self.auth(self.agent.get(url)).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let headers = format!("{:?}", res.headers());
        (res.status().as_u16(), headers, res.body_mut().read_to_string().unwrap())
    }

    fn get_json(&self, url: &str) -> Value {
        let (code, _, body) = self.get(url);
        assert_eq!(code, 200, "GET {url}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    fn post_json(&self, url: &str, body: &Value) -> Value {
        let mut res = self
            .auth(self.agent.post(url))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let code = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        assert_eq!(code, 200, "POST {url}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"))
    }
}

/// The flags every Chromium run here uses.
fn chromium_flags(profile: &Path) -> Vec<String> {
    vec![
        "--headless=new".into(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-extensions".into(),
        "--disable-background-networking".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        "--force-color-profile=srgb".into(),
        "--run-all-compositor-stages-before-draw".into(),
        format!("--window-size={WIDTH},{HEIGHT}"),
        format!("--user-data-dir={}", profile.display()),
    ]
}

/// A Chromium process in its own process group; the whole group (browser, renderers, GPU and utility processes)
/// is killed on drop.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_group(mut cmd: Command) -> Group {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    Group(cmd.spawn().expect("start chromium"))
}

/// `chromium --headless=new --dump-dom --virtual-time-budget=… URL` (bounded by a real-time timeout).
fn dump_dom(chromium: &Path, url: &str, profile: &Path) -> String {
    let mut cmd = Command::new(chromium);
    cmd.args(chromium_flags(profile))
        .args(["--virtual-time-budget=10000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut group = spawn_group(cmd);
    let mut out = group.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            assert!(status.success(), "chromium --dump-dom failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "chromium --dump-dom did not finish in 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(group); // its helper processes too
    reader.join().unwrap()
}

/// Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands in on fd 3,
/// replies and events out on fd 4, NUL-terminated JSON; a shell maps them onto the child's stdin and stdout).
struct Browser {
    stdin: std::process::ChildStdin,
    rx: Receiver<Value>,
    next_id: u64,
    /// `Runtime.consoleAPICalled` and `Runtime.exceptionThrown` events, for failure messages.
    console: Vec<String>,
    exceptions: Vec<String>,
    _group: Group,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path) -> Browser {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium)
            .args(chromium_flags(profile))
            .arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut group = spawn_group(cmd);
        let stdin = group.0.stdin.take().unwrap();
        let mut stdout = group.0.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser { stdin, rx, next_id: 0, console: Vec::new(), exceptions: Vec::new(), _group: group }
    }

    /// A new tab of WIDTH x HEIGHT CSS pixels (device scale 1), attached: its session id.
    fn open(&mut self) -> String {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}), None);
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = self.call("Target.attachToTarget", json!({"targetId": target, "flatten": true}), None);
        let session = attached["sessionId"].as_str().unwrap().to_string();
        self.call("Page.enable", json!({}), Some(&session));
        self.call("Runtime.enable", json!({}), Some(&session));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
            Some(&session),
        );
        session
    }

    /// Sends a command and waits (at most 60 s) for its result.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.try_call(method, params, session).unwrap_or_else(|e| panic!("{method}: {e}\n{}", self.diagnostics()))
    }

    fn try_call(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.stdin.write_all(&bytes).and_then(|_| self.stdin.flush()).map_err(|e| format!("chromium is gone: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.rx.recv_timeout(left).map_err(|_| "no answer from chromium in 60 s".to_string())?;
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v["result"].clone()),
                };
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = v["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.get("value").map_or_else(|| a["description"].to_string(), |x| x.to_string()))
                    .collect();
                self.console.push(format!("console.{}: {}", v["params"]["type"], args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                self.exceptions.push(format!("{} {}", d["text"], d["exception"]["description"]));
            }
            _ => {}
        }
    }

    /// The value of a JavaScript expression in the page (`null` while the page is being replaced).
    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            Some(session),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}\n{}", self.diagnostics());
        }
        r["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Polls `expr` every 200 ms until it is not `null`, at most `timeout`.
    fn wait_for(&mut self, session: &str, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let params = json!({"expression": expr, "returnByValue": true});
            // Errors while a navigation replaces the page's context are retried.
            if let Ok(r) = self.try_call("Runtime.evaluate", params, Some(session)) {
                if let Some(v) = r["result"].get("value").filter(|v| !v.is_null()) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                let dom = self.eval(session, "document.body ? document.body.innerText : ''");
                panic!("timed out after {timeout:?} waiting for {expr}\npage text: {dom}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&mut self, session: &str) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}), Some(session));
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }

    fn exceptions(&self) -> &[String] {
        &self.exceptions
    }

    fn diagnostics(&self) -> String {
        format!("page console: {:#?}\npage exceptions: {:#?}", self.console, self.exceptions)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely first (the group is killed right after anyway).
        self.next_id += 1;
        let mut bytes = serde_json::to_vec(&json!({"id": self.next_id, "method": "Browser.close"})).unwrap();
        bytes.push(0);
        let _ = self.stdin.write_all(&bytes);
        let _ = self.rx.recv_timeout(Duration::from_secs(2));
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The screenshot is WIDTH x HEIGHT, not blank (many colors), and shows both stage colors over a real area.
fn check_screenshot(png_bytes: &[u8], path: &Path) {
    let decoder = png::Decoder::new(png_bytes);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT), "{}", path.display());
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        t => panic!("unexpected PNG color type {t:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = buf[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]);
    let mut colors = std::collections::HashSet::new();
    let (mut stage1, mut stage2) = (0usize, 0usize);
    let near = |p: [u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(&a, b)| a.abs_diff(b) <= 4);
    for p in pixels {
        colors.insert(p);
        stage1 += near(p, STAGE_1) as usize;
        stage2 += near(p, STAGE_2) as usize;
    }
    println!("screenshot: {} colors, stage 1 color {stage1} px, stage 2 color {stage2} px", colors.len());
    assert!(colors.len() > 200, "a nearly blank screenshot ({} colors): {}", colors.len(), path.display());
    // The plan bar alone is ~64 px high and a few hundred px wide per stage.
    for (name, n) in [("stage 1", stage1), ("stage 2", stage2)] {
        assert!(n > 5_000, "{name}'s color covers only {n} px: {}", path.display());
    }
}
