//! What the end-to-end tests share: the real binary started on a free port
//! with a fresh data directory, and calls to it over HTTP.
#![allow(dead_code)] // Each test file uses a part.

#[allow(unused_imports)] // Only the PostgreSQL tests use it.
pub use headroom::throwaway_postgres as postgres;

pub mod fakes;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub const ADMIN: &str = "test-admin-token-0123456789";

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// A fresh directory, removed when dropped.
pub struct Directory(pub PathBuf);

impl Directory {
    pub fn new(name: &str) -> Directory {
        let path = std::env::temp_dir().join(format!("headroom-server-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Directory(path)
    }

    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_headroom")
}

/// Runs `headroom bench --json` with `load` and `more` arguments; its report.
pub fn bench(load: &[&str], more: &[&str]) -> Value {
    let output = Process::new(binary()).arg("bench").arg("--json").args(load).args(more).output().unwrap();
    assert!(output.status.success(), "bench {load:?} {more:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

impl Server {
    /// Starts `headroom serve` on a free port with the admin token [`ADMIN`].
    pub fn start(data: &Path) -> Server {
        Server::start_with(Process::new(binary()), data, Some(ADMIN))
    }

    /// Starts the server through `command` (a wrapper such as a shell, or the
    /// binary itself) and waits until it prints where it listens.
    pub fn start_with(command: Process, data: &Path, admin: Option<&str>) -> Server {
        Server::start_with_arguments(command, data, admin, &[])
    }

    /// As [`Server::start_with`], with more `serve` arguments (`--catalog FILE`…).
    pub fn start_with_arguments(
        mut command: Process,
        data: &Path,
        admin: Option<&str>,
        arguments: &[&OsStr],
    ) -> Server {
        command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data).args(arguments);
        command.env_remove("HEADROOM_ADMIN_TOKEN");
        if let Some(token) = admin {
            command.env("HEADROOM_ADMIN_TOKEN", token);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            stdout.lock().unwrap().push(line.clone());
            if let Some(address) = line.strip_prefix("headroom listening on ") {
                url = Some(address.to_string());
                break;
            }
        }
        let Some(url) = url else {
            let status = child.wait().unwrap();
            panic!("the server exited ({status}) before listening: {:?}", stdout.lock().unwrap());
        };
        let rest = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                rest.lock().unwrap().push(line);
            }
        });
        Server { child, url, stdout }
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let body = body.map(|body| body.to_string().into_bytes());
        self.raw(method, path, token, body.as_deref())
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, Some(ADMIN), body)
    }

    pub fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
        request(&self.url, method, path, token, body).expect("the server answers")
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Process::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.child.wait().unwrap()
    }
}

/// One request to the server at `base`; `Err` when it cannot be reached or
/// the connection drops before the answer (a node that was killed).
pub fn try_call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let body = body.map(|body| body.to_string().into_bytes());
    request(base, method, path, token, body.as_deref()).map_err(|error| error.to_string())
}

fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Reply, ureq::Error> {
    let agent = agent();
    let url = format!("{base}{path}");
    let authorization = token.map(|token| format!("Bearer {token}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut request = agent.get(&url);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            request.call()
        }
        ("DELETE", _) => agent.delete(&url).call(),
        (_, body) => {
            let mut request = if method == "PUT" { agent.put(&url) } else { agent.post(&url) };
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            request.header("content-type", "application/json").send(body.unwrap_or_default())
        }
    }?;
    read_reply(response)
}

/// A client that returns every status as an answer, never as an error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// An answer's status, headers and body (JSON when it parses as JSON).
fn read_reply(mut response: ureq::http::Response<ureq::Body>) -> Result<Reply, ureq::Error> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or_default().to_string()))
        .collect();
    let text = response.body_mut().with_config().limit(64 << 20).read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply { status, headers, body })
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// Asserts the status and, for an error, the one error shape and its code.
    pub fn expect(self, status: u16, code: Option<&str>) -> Reply {
        assert_eq!(self.status, status, "{self:?}");
        if let Some(code) = code {
            assert_eq!(self.body["error"]["code"], code, "{self:?}");
            assert!(!self.body["error"]["message"].as_str().unwrap().is_empty(), "{self:?}");
            assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        }
        self
    }
}
