//! `edge-coord inspect` on the real model: the numbers the planner will use, checked by hand.

use std::process::Command;

#[test]
fn inspect_reports_the_planner_view_of_smollm2() {
    let path = std::env::var("EDGE_MODEL").unwrap_or_else(|_| edge_node::setup::default_model().display().to_string());
    edge_node::setup::check_model(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_edge-coord")).args(["inspect", "--json", "--model", &path]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["n_layers"], 30);
    // Every layer has the same shapes: q,o 576x576; k,v 192x576; gate,up,down 1536x576 in Q4_1 (20 bytes per 32
    // weights) plus two f32 norms of 576.
    let q4_1 = |n: u64| n / 32 * 20;
    let layer = q4_1(2 * 576 * 576 + 2 * 192 * 576 + 3 * 1536 * 576) + 2 * 576 * 4;
    assert!(v["layer_weight_bytes"].as_array().unwrap().iter().all(|b| b.as_u64() == Some(layer)), "{v}");
    let embed = 49152u64 * 576 / 32 * 36; // Q8_0 on the device: 2 texels of quants + a scale word per 32 weights
    assert_eq!(v["embed_bytes"], embed);
    assert_eq!(v["tied_embeddings"], true);
    assert_eq!(v["head_bytes"], embed + 576 * 4);
    assert_eq!(v["kv_bytes_per_token_per_layer"], 2 * 192 * 4);
    assert_eq!(v["activation_bytes_per_token"], 576 * 4);
}

#[test]
fn inspect_without_a_model_names_the_setup_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-coord"))
        .args(["inspect", "--model", "/nonexistent.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/setup.sh"));
}
