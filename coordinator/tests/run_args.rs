//! `edge-coord run` refuses bad parameters with a clear message before it touches the network.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("edge-run-args-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_edge-coord"))
        .arg("run")
        .args(args)
        .args(["--no-mdns", "--wait", "0"])
        .arg("--data-dir")
        .arg(&dir)
        .env("EDGE_CLUSTER_KEY", "00".repeat(32))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_parameters_are_refused_clearly() {
    let cases: [(&[&str], &str); 8] = [
        (&["-p", "hi", "-n", "-1"], "invalid value '-1'"),
        (&["-p", "hi", "--sequences", "0"], "--sequences must be between 1 and 64"),
        (&["-p", "hi", "--ctx", "0"], "--ctx must be between 1 and the model's context length 8192"),
        (&["-p", "hi", "--ctx", "100000"], "--ctx must be between 1 and the model's context length 8192"),
        (
            &["-p", "Once upon a time, there was a little robot named", "--ctx", "5"],
            "the prompt is 11 tokens but the context holds 5",
        ),
        (&["-p", "hi", "--temperature", "-1"], "temperature must be a finite number >= 0"),
        (&["-p", "hi", "--top-p", "0"], "top-p must be in (0, 1]"),
        (&["-p", "hi", "--model", "/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
    ];
    for (args, want) in cases {
        let (ok, err) = run(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err}");
    }
    let (ok, err) = run(&["-p", "hi", "--tensor-parallel", "many"]);
    assert!(!ok && err.contains("is not auto, off or a number of nodes"), "{err}");
}

/// `--help` explains the commands with examples, how members are found, and the environment.
#[test]
fn help_explains_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-coord")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for want in ["serve", "status", "Examples:", "--cluster-key", "config.toml", "RUST_LOG", "qwen2.5-coder:0.5b"] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
}
