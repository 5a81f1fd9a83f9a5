//! Teacher-forced top-1 agreement of a backend with a llama.cpp fixture:
//! `cargo run --release --example agreement -- MODEL FIXTURE.json [cpu|reference]`
use edge_node::backend::{Backend, LoadedModel};
use edge_node::shard::{HeadOutput, ShardInput, ShardOutput};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = LoadedModel::open(std::path::Path::new(&a[1])).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a[2]).unwrap()).unwrap();
    let get = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let (ids, want) = (get("ids"), get("top1"));
    let b = if a.get(3).map(String::as_str) == Some("reference") { Backend::Reference } else { Backend::Cpu };
    let mut chain = m.shards(b, &[], &Default::default()).unwrap();
    chain[0].open_sequence(1, ids.len()).unwrap();
    let ShardOutput::Tokens(got) = chain[0].forward(1, ShardInput::Tokens(&ids), HeadOutput::ArgmaxAll).unwrap() else {
        panic!()
    };
    let same = got.iter().zip(&want).filter(|(x, y)| x == y).count();
    println!("{} of {} ({:.2}%)", same, ids.len(), 100.0 * same as f64 / ids.len() as f64);
}
