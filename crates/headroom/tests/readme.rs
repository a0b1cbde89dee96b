//! The README's tour is run as written against the real server, so that it
//! never goes stale: every shell block between `<!-- tour:begin -->` and
//! `<!-- tour:end -->` runs, in order, in one shell, and its output must
//! hold every string of the `<!-- expect: a | b -->` comment after it.

use std::path::Path;
use std::process::Command as Process;

mod support;
use support::*;

struct Step {
    script: String,
    expected: Vec<String>,
}

fn tour(readme: &str) -> Vec<Step> {
    let begin = readme.find("<!-- tour:begin -->").expect("the README marks its tour");
    let end = readme.find("<!-- tour:end -->").expect("the README marks the end of its tour");
    let mut rest = &readme[begin..end];
    let mut steps = Vec::new();
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let close = body.find("\n```").expect("a closed code block");
        let script = body[..close].to_string();
        let after = &body[close + 4..];
        let comment =
            after.trim_start().strip_prefix("<!-- expect:").expect("every tour block is followed by its expectations");
        let comment = &comment[..comment.find("-->").expect("a closed comment")];
        let expected = comment.split(" | ").map(|part| part.trim().to_string()).collect();
        steps.push(Step { script, expected });
        rest = after;
    }
    steps
}

#[test]
fn the_readme_tour_runs_as_written() {
    assert!(
        Process::new("curl").arg("--version").output().is_ok_and(|output| output.status.success()),
        "the tour needs curl: scripts/test.sh installs it"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = tour(&readme);
    assert!(steps.len() >= 8, "the tour has {} steps", steps.len());

    let directory = Directory::new("readme");
    let server = Server::start(&directory.data());
    let binary_directory = Path::new(binary()).parent().unwrap().to_str().unwrap().to_string();
    let mut script = String::from("set -euo pipefail\n");
    for (index, step) in steps.iter().enumerate() {
        let text =
            step.script.replace("http://127.0.0.1:8080", &server.url).replace("$PWD/target/release", &binary_directory);
        script.push_str(&format!("echo '@@step {index}@@'\n{text}\n"));
    }
    let output = Process::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("HEADROOM_TOKEN", ADMIN)
        .env("HEADROOM_URL", &server.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "the tour failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let outputs: Vec<&str> = stdout.split("@@step ").skip(1).collect();
    assert_eq!(outputs.len(), steps.len());
    for (index, (step, output)) in steps.iter().zip(outputs).enumerate() {
        for expected in &step.expected {
            assert!(
                output.contains(expected.as_str()),
                "tour step {index} lacks {expected:?}:\n{}\n---\n{output}",
                step.script
            );
        }
    }
}
