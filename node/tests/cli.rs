//! The `edge-node` binary as a user runs it: real text from the real model, and clear errors for bad input.

mod common;

use std::process::{Command, Output};

fn edge_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .args(args)
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("run edge-node")
}

fn model() -> String {
    let (_, _) = common::smollm2(); // fails with the setup hint when the model is missing
    std::env::var("EDGE_MODEL").unwrap_or_else(|_| edge_node::setup::default_model().display().to_string())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generate_streams_the_reference_continuation_and_reports_speed() {
    let m = model();
    let out = edge_node(&[
        "generate",
        "--model",
        &m,
        "--backend",
        "reference",
        "--prompt",
        common::REFERENCE_PROMPT,
        "-n",
        "8",
        "--print-ids",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with(common::REFERENCE_PROMPT), "{stdout}");
    assert!(stdout.contains("ids: [659, 4075, 617, 4161, 281, 253, 905, 1135]"), "{stdout}");
    assert!(stderr.contains("prefill: 11 tokens at") && stderr.contains("decode: 8 tokens at"), "{stderr}");
}

#[test]
fn chat_mode_answers_and_stops_at_end_of_turn() {
    let m = model();
    let out = edge_node(&[
        "generate",
        "--model",
        &m,
        "--backend",
        "reference",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "-n",
        "40",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("stopped at end of generation"), "{stderr}");
}

#[test]
fn a_missing_model_names_the_setup_command() {
    let out = edge_node(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not found") && err.contains("scripts/setup.sh"), "{err}");
}

#[test]
fn a_truncated_model_is_a_clear_error() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("edge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A renamed, truncated copy (unknown file name, so only the GGUF reader can notice).
    let path = dir.join("cut.gguf");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::write(&path, &bytes[..4 << 20]).unwrap();
    let out = edge_node(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi"]);
    // The known file name with the wrong size is caught before parsing, with the fix.
    let known = dir.join(edge_node::setup::SMOLLM2.file);
    std::fs::write(&known, &bytes[..1 << 20]).unwrap();
    let out2 = edge_node(&["generate", "--model", known.to_str().unwrap(), "--prompt", "hi"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("truncated"), "{}", text(&out.stderr));
    assert!(!out2.status.success());
    let err2 = text(&out2.stderr);
    assert!(err2.contains("1048576 bytes, expected 98362432") && err2.contains("scripts/setup.sh"), "{err2}");
}

#[test]
fn bad_parameters_are_rejected_with_a_reason() {
    let m = model();
    for (args, expect) in [
        (vec!["--temperature", "-1"], "temperature"),
        (vec!["--top-p", "0"], "top-p"),
        (vec!["--ctx", "4"], "context holds 4"),
        (vec!["--ctx", "999999"], "--ctx must be between"),
        (vec!["-n", "-3"], "invalid value '-3'"),
        (vec!["--backend", "tpu"], "invalid value 'tpu'"),
    ] {
        let mut a = vec!["generate", "--model", &m, "--prompt", common::REFERENCE_PROMPT];
        a.extend(args.iter().copied());
        let out = edge_node(&a);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn info_describes_the_model() {
    let m = model();
    let out = edge_node(&["info", "--model", &m]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("layers         30") && stdout.contains("Q4_1") && stdout.contains("Q8_0"), "{stdout}");
}

/// `--backend wgpu` without an adapter says how to get one; the default (`auto`) runs on the CPU kernels.
#[test]
fn no_vulkan_adapter_says_how_to_install_one_and_auto_uses_the_cpu() {
    let m = model();
    let run = |backend: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_edge-node"))
            .args(["generate", "--model", &m, "--prompt", "hi", "-n", "1"])
            .args(backend)
            .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
            .output()
            .unwrap()
    };
    let out = run(&["--backend", "wgpu"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no Vulkan adapter") && err.contains("mesa-vulkan-drivers") && err.contains("--backend cpu"),
        "{err}"
    );
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("on cpu ("), "{}", text(&out.stderr));
}

/// `edge-node perplexity` refuses what it cannot score, with the reason.
#[test]
fn perplexity_errors_name_the_problem() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("edge-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let out = edge_node(&["perplexity", "-m", &m, "--backend", "cpu", short.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("fewer than one chunk of 512"), "{}", text(&out.stderr));
    let out = edge_node(&["perplexity", "-m", &m, "--backend", "cpu", dir.join("missing.txt").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("missing.txt"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Models by short name (ollama style), the help that explains configuration, and RUST_LOG logs on stderr.
#[test]
fn short_model_names_help_and_logs() {
    let _ = common::qwen05(); // fails with the setup hint when the model is missing
    let out = edge_node(&["info", "-m", "qwen2.5-coder:0.5b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("qwen2"), "{}", text(&out.stdout));
    let out = edge_node(&["info", "-m", "qwen9:70b"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("qwen9:70b not found") && text(&out.stderr).contains("scripts/setup.sh"));

    let help = text(&edge_node(&["--help"]).stdout);
    for want in ["Examples:", "config.toml", "RUST_LOG", "qwen2.5-coder:0.5b"] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }

    let m = model();
    let out = Command::new(env!("CARGO_BIN_EXE_edge-node"))
        .args(["generate", "--model", &m, "--backend", "cpu", "-p", "Hi", "-n", "1"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("INFO") && err.contains("model opened") && err.contains("arch=llama"), "{err}");
    assert!(err.contains("DEBUG") && err.contains("generation done"), "RUST_LOG=debug shows debug events: {err}");
    assert!(!text(&out.stdout).contains("DEBUG"), "logs stay off stdout");
}
