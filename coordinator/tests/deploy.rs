//! Deploying stages on members running in this process (real libp2p on 127.0.0.1, real model, wgpu): the pipeline
//! generates the tokens of the same model run locally, the second deployment of the same stages ships nothing,
//! and a corrupted cache entry is detected and sent again.

use std::time::Duration;

use edge_coord::deploy::{deploy, Assignment, ModelFacts};
use edge_coord::job::{self, Job};
use edge_node::backend::{Backend, LoadedModel};
use edge_node::generate::{generate, GenerateRequest};
use edge_node::gpu::GpuOptions;
use edge_node::net::keys;
use edge_node::serve::{start_member, MemberOptions, RunningMember};
use edge_protocol::stage::{JobParams, SamplingParams};
use edge_protocol::ShardSpec;

fn model() -> LoadedModel {
    let path =
        std::env::var_os("EDGE_MODEL").map(std::path::PathBuf::from).unwrap_or_else(edge_node::setup::default_model);
    LoadedModel::open(&path).unwrap_or_else(|e| panic!("{e:#} (run `bash scripts/setup.sh`)"))
}

async fn member(dir: &std::path::Path, key: libp2p::pnet::PreSharedKey) -> RunningMember {
    let opts = MemberOptions::loopback(Backend::Wgpu, Some(1 << 30));
    start_member(dir, key, opts).await.unwrap()
}

const PROMPT: [u32; 11] = [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8085, 3365];

#[test]
fn a_two_stage_pipeline_matches_local_generation_and_caches_its_tensors() {
    let m = model();
    let facts = ModelFacts::of(&m, &edge_node::tokenizer::Tokenizer::from_gguf(&m.gguf).unwrap());
    let n = 16;
    let mut chain = m.shards(Backend::Wgpu, &[], &GpuOptions::default()).unwrap();
    let req = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_tokens: n,
        context: 64,
        sampling: SamplingParams::default(),
        stop: vec![],
    };
    let (local, _) = generate(&mut chain, &req, |_| true).unwrap();
    drop(chain);

    let root = std::env::temp_dir().join(format!("edge-deploy-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let key = keys::new_cluster_key();
        let a = member(&root.join("a"), key).await;
        let b = member(&root.join("b"), key).await;
        let coord = member(&root.join("coord"), key).await; // its client dials the others
        for addr in a.dial_addrs().into_iter().chain(b.dial_addrs()) {
            coord.client.dial(addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let specs = ShardSpec::split(30, &[13]);
        let stages = vec![
            Assignment { spec: specs[0], members: vec![(a.client.peer_id(), None)] },
            Assignment { spec: specs[1], members: vec![(b.client.peer_id(), None)] },
        ];
        let params = JobParams::new(64, n as u32);
        let jobs = vec![Job { prompt: PROMPT.to_vec(), params: params.clone() }; 2];
        let progress = indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden());

        let mut d = deploy(&coord.client, (&m, &facts), stages.clone(), (2, 2), 64, &progress).await.unwrap();
        assert!(d.loads.iter().all(|l| l.sent_bytes == l.stage_bytes && l.sent_bytes > 0), "{:?}", d.loads);
        let mut out = vec![job::Outcome::default(); 2];
        job::run(&mut d, &jobs, &mut out, |_, _| {}).await.unwrap();
        d.close().await;
        for o in &out {
            assert_eq!(o.tokens, local, "two sequences at once through two stages");
            assert_eq!(o.stages.len(), 2);
            assert!(o.stages.iter().all(|s| s.steps as usize == n), "{:?}", o.stages);
        }

        // The same stages again: nothing to send.
        let mut d = deploy(&coord.client, (&m, &facts), stages.clone(), (1, 1), 64, &progress).await.unwrap();
        assert!(d.loads.iter().all(|l| l.sent_bytes == 0), "{:?}", d.loads);
        let mut out = vec![job::Outcome::default()];
        job::run(&mut d, &jobs[..1], &mut out, |_, _| {}).await.unwrap();
        assert_eq!(out[0].tokens, local);
        d.close().await;

        // A flipped byte in one of b's cached tensors: found before use, that tensor alone is sent again.
        let cache = root.join("b").join("tensors");
        let victim = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .max_by_key(|p| p.metadata().unwrap().len())
            .unwrap();
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[1000] ^= 0x40;
        std::fs::write(&victim, &bytes).unwrap();
        let mut d = deploy(&coord.client, (&m, &facts), stages, (1, 1), 64, &progress).await.unwrap();
        let resent: u64 = d.loads.iter().map(|l| l.sent_bytes).sum();
        assert_eq!(resent, bytes.len() as u64, "exactly the corrupted tensor is sent again");
        let mut out = vec![job::Outcome::default()];
        job::run(&mut d, &jobs[..1], &mut out, |_, _| {}).await.unwrap();
        assert_eq!(out[0].tokens, local);
        d.close().await;
        for m in [a, b, coord] {
            m.stop().await;
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}
