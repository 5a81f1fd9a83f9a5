//! `edge-coord serve` running replicas of the model on real processes (cpu members on 127.0.0.1): concurrent
//! requests go to both replicas; a node killed in one replica while it generates does not change any text, and
//! the other replica keeps answering while it re-plans; a node that joins later becomes a new replica without a
//! restart. Every text is the greedy continuation of one CPU shard in this process.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use edge_node::tokenizer::Tokenizer;
use edge_tests::http::{get_json, post_json};
use edge_tests::{new_key, Node, NodeSpec, Server, REFERENCE_PROMPT};
use serde_json::{json, Value};

/// Both tests start several members on a 2-core machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The greedy continuation of the reference prompt by one CPU shard here, as text after `n` tokens.
fn greedy_text(n: usize) -> String {
    use edge_node::backend::Backend;
    let m = edge_tests::smollm2();
    let tok = Tokenizer::from_gguf(&m.gguf).unwrap();
    let req = edge_node::generate::GenerateRequest {
        prompt: edge_tests::REFERENCE_IDS.to_vec(),
        max_tokens: n,
        context: 256,
        sampling: Default::default(),
        stop: vec![],
    };
    let mut chain = m.shards(Backend::Cpu, &[], &Default::default()).unwrap();
    let (tokens, _) = edge_node::generate::generate(&mut chain, &req, |_| true).unwrap();
    tok.decode(&tokens)
}

fn model_name() -> String {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// A greedy completion of the reference prompt: its text (the status must be 200).
fn complete(url: &str, max_tokens: usize) -> String {
    complete_with_id(url, max_tokens).1
}

/// [`complete`] with the response's id (the job's id in the status).
fn complete_with_id(url: &str, max_tokens: usize) -> (String, String) {
    let body = json!({"model": model_name(), "prompt": REFERENCE_PROMPT, "max_tokens": max_tokens, "temperature": 0});
    let (status, r) = post_json(url, "/v1/completions", &body, None);
    assert_eq!(status, 200, "{r}");
    (r["id"].as_str().unwrap().to_string(), r["choices"][0]["text"].as_str().unwrap().to_string())
}

/// The peer ids of a replica's plan (empty while it has none).
fn replica_nodes(replica: &Value) -> Vec<String> {
    replica["plan"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["members"].as_array().unwrap())
        .map(|m| m["node"].as_str().unwrap().to_string())
        .collect()
}

fn status(url: &str) -> Value {
    get_json(url, "/api/status", None)
}

/// `n` completions of `max_tokens` at once, each on its own thread; their texts in order.
fn concurrently(url: &str, n: usize, max_tokens: usize) -> Vec<std::thread::JoinHandle<String>> {
    (0..n)
        .map(|_| {
            let url = url.to_string();
            std::thread::spawn(move || complete(&url, max_tokens))
        })
        .collect()
}

/// `n` CPU members, the others dialing the first.
fn members(key: &str, n: usize) -> Vec<Node> {
    let mut nodes = vec![Node::start(key, NodeSpec::default())];
    for _ in 1..n {
        let addr = nodes[0].addr.clone();
        nodes.push(Node::start(key, NodeSpec { peers: &[&addr], ..Default::default() }));
    }
    nodes
}

/// Waits (at most 2 minutes) until replica `replica` runs a request that has 4 tokens or more.
fn wait_until_generating(server: &Server, replica: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(&server.url);
        let busy = s["jobs"].as_array().unwrap().iter().any(|j| {
            j["replica"] == replica && j["state"] == "running" && j["completion_tokens"].as_u64().unwrap() >= 4
        });
        if busy {
            return;
        }
        assert!(Instant::now() < deadline, "replica {replica} never ran a request: {s}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The replica of every job in the status.
fn job_replicas(url: &str) -> Vec<u64> {
    status(url)["jobs"].as_array().unwrap().iter().map(|j| j["replica"].as_u64().unwrap()).collect()
}

#[test]
fn two_replicas_share_the_requests_and_a_lost_node_changes_no_text() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (want32, want64) = (greedy_text(32), greedy_text(64));
    let key = new_key();
    let mut nodes = members(&key, 4);
    // (Whole layers only: tensor-parallel partial sums are added in another order than one node's.)
    let args = ["--ctx", "256", "--replicas", "2", "--sequences", "4", "--tensor-parallel", "off"];
    let server = Server::start(&key, &nodes.iter().collect::<Vec<_>>(), &args);
    let url = server.url.clone();
    assert!(server.log().contains("on 2 replicas"), "{}", server.log());

    let s = status(&url);
    let replicas = s["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{s}");
    let (r0, r1) = (replica_nodes(&replicas[0]), replica_nodes(&replicas[1]));
    assert!(!r0.is_empty() && !r1.is_empty() && r0.iter().all(|n| !r1.contains(n)), "{r0:?} {r1:?}");
    for r in replicas {
        assert_eq!(r["plan"]["sequences"], 2, "each replica holds half the sequences: {r}");
    }

    // Concurrent requests use both replicas and all get the one-node text.
    for t in concurrently(&url, 6, 32) {
        assert_eq!(t.join().unwrap(), want32);
    }
    let used = job_replicas(&url);
    assert!(used.contains(&0) && used.contains(&1), "jobs ran on replicas {used:?}");

    // Kill a node of replica 1 while it generates.
    let running = concurrently(&url, 8, 64);
    wait_until_generating(&server, 1);
    let victim = r1[0].clone();
    drop(nodes.remove(nodes.iter().position(|n| n.peer_id == victim).unwrap()));
    // While replica 1 re-plans (its plan is gone from the status), a new request goes to replica 0 and is
    // answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status(&url)["replicas"][1]["plan"].is_null() {
        assert!(Instant::now() < deadline, "replica 1 never noticed its lost node\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (id, text) = complete_with_id(&url, 32);
    assert_eq!(text, want32, "{}", server.log());
    let s = status(&url);
    let job = s["jobs"].as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(job["replica"], 0, "{job}");
    for t in running {
        assert_eq!(t.join().unwrap(), want64, "{}", server.log());
    }
    let log = server.log();
    // (Logs count replicas from 1, the status from 0.)
    assert!(log.contains("warning: replica 2:") && log.contains("re-planning"), "{log}");

    // Replica 1 runs again without the lost node and without replica 0's.
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = status(&url);
        if !s["replicas"][1]["plan"].is_null() {
            break s;
        }
        assert!(Instant::now() < deadline, "replica 1 did not come back: {s}\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let now = replica_nodes(&s["replicas"][1]);
    assert!(!now.contains(&victim) && now.iter().all(|n| !r0.contains(n)), "{now:?} (lost {victim}, replica 0 {r0:?})");
    assert_eq!(replica_nodes(&s["replicas"][0]), r0);
    for t in concurrently(&url, 4, 32) {
        assert_eq!(t.join().unwrap(), want32);
    }
}

#[test]
fn a_node_that_joins_later_becomes_a_new_replica() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let want = greedy_text(24);
    let key = new_key();
    let a = Node::start(&key, NodeSpec::default());
    let args = ["--ctx", "256", "--replicas", "2", "--sequences", "2", "--tensor-parallel", "off"];
    let server = Server::start(&key, &[&a], &args);
    let url = server.url.clone();
    assert!(server.log().contains("1 node(s) for 2 replicas"), "{}", server.log());
    assert_eq!(status(&url)["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(complete(&url, 24), want);

    let b = Node::start(&key, NodeSpec { peers: &[&a.addr], ..Default::default() });
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = status(&url);
        let up = s["replicas"].as_array().unwrap().iter().filter(|r| !r["plan"].is_null()).count();
        if up == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "no second replica: {s}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(replica_nodes(&s["replicas"][1]), vec![b.peer_id.clone()], "{s}");
    for t in concurrently(&url, 4, 24) {
        assert_eq!(t.join().unwrap(), want);
    }
    let used = job_replicas(&url);
    assert!(used.contains(&1), "the new replica took no request: {used:?}");
}

#[test]
fn a_replica_left_without_nodes_hands_its_running_requests_to_another() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let want = greedy_text(64);
    let key = new_key();
    let mut nodes = members(&key, 3);
    let args = ["--ctx", "256", "--replicas", "2", "--sequences", "4", "--tensor-parallel", "off"];
    let server = Server::start(&key, &nodes.iter().collect::<Vec<_>>(), &args);
    let url = server.url.clone();
    let s = status(&url);
    let r0 = replica_nodes(&s["replicas"][0]);
    assert!(!r0.is_empty(), "{s}");

    let running = concurrently(&url, 6, 64);
    wait_until_generating(&server, 1);
    // Every node replica 0 does not hold goes: replica 1 cannot plan again.
    nodes.retain(|n| r0.contains(&n.peer_id));
    for t in running {
        assert_eq!(t.join().unwrap(), want, "{}", server.log());
    }
    let log = server.log();
    assert!(log.contains("error: replica 2:") && log.contains("its requests go to the other replicas"), "{log}");
    let s = status(&url);
    assert!(s["replicas"][1]["plan"].is_null() && s["replicas"][1]["unavailable"].is_string(), "{s}");
    // Requests now all go to replica 0; the cluster as a whole stays available.
    assert_eq!(complete(&url, 64), want);
    let metrics =
        edge_tests::http::agent().get(format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metrics.contains("edge_replicas_up 1\n") && metrics.contains("edge_plan_up 1\n"), "{metrics}");
}
