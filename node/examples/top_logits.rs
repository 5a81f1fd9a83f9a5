//! Top logits after a prompt on a backend: `cargo run --release --example top_logits -- MODEL cpu|reference ID,ID,...`
use edge_node::backend::{Backend, LoadedModel};
use edge_node::shard::{HeadOutput, ShardInput, ShardOutput};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m = LoadedModel::open(std::path::Path::new(&a[1])).unwrap();
    let b = if a[2] == "cpu" { Backend::Cpu } else { Backend::Reference };
    let ids: Vec<u32> = a[3].split(',').map(|s| s.parse().unwrap()).collect();
    let mut chain = m.shards(b, &[], &Default::default()).unwrap();
    chain[0].open_sequence(1, 64).unwrap();
    let ShardOutput::Logits(l) = chain[0].forward(1, ShardInput::Tokens(&ids), HeadOutput::LogitsLast).unwrap() else {
        panic!()
    };
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
    for &i in &idx[..4] {
        println!("{i}: {}", l[i]);
    }
}
