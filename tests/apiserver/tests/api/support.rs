//! Fixtures shared by the test API server's tests: a server per test, a kube-rs client for it,
//! the real kubectl with its own HOME and cache, raw HTTP, and waiting on conditions with a
//! deadline instead of sleeping.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use test_apiserver::{ApiServer, Options};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub async fn server() -> ApiServer {
    ApiServer::start(Options::default())
        .await
        .expect("the test API server starts")
}

pub async fn client(server: &ApiServer) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("kubeconfig loads");
    kube::Client::try_from(config).expect("client builds")
}

/// Polls `check` every 20 ms until it gives `Some`, or fails after `deadline` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test custom resource: the shape of redis-pair's RedisPair.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "redispair.io",
    version = "v1",
    kind = "RedisPair",
    namespaced,
    status = "RedisPairStatus",
    shortname = "rp"
)]
pub struct RedisPairSpec {
    pub port: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct RedisPairStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

/// The RedisPair CRD as a manifest: schema rules (range, default, CEL) and printer columns.
pub fn redispair_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "redispairs.redispair.io"},
        "spec": {
            "group": "redispair.io",
            "scope": "Namespaced",
            "names": {"plural": "redispairs", "singular": "redispair", "kind": "RedisPair", "shortNames": ["rp"], "categories": ["all"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Master", "type": "string", "jsonPath": ".status.master"},
                    {"name": "Port", "type": "integer", "jsonPath": ".spec.port", "priority": 1},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["port"],
                            "x-kubernetes-validations": [
                                {"rule": "self.replicas >= 1", "message": "replicas must be at least 1"},
                                {"rule": "self.port == oldSelf.port", "message": "port is immutable"}
                            ],
                            "properties": {
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                "replicas": {"type": "integer", "default": 2}
                            }
                        },
                        "status": {"type": "object", "properties": {"master": {"type": "string"}}}
                    }
                }}
            }]
        }
    })
}

pub fn redispair_crd_yaml() -> String {
    // JSON is YAML: kubectl reads it as a manifest.
    serde_json::to_string_pretty(&redispair_crd()).expect("serializes")
}

/// Creates the RedisPair CRD through kube-rs.
pub async fn install_crd(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let crd: CustomResourceDefinition =
        serde_json::from_value(redispair_crd()).expect("CRD deserializes");
    crds.create(&kube::api::PostParams::default(), &crd)
        .await
        .expect("CRD created");
}

/// The workspace root (the test API server lives at tests/apiserver).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The pinned kubectl: `$REDISPAIR_KUBECTL`, else `target/tools/kubectl` of the workspace.
pub fn kubectl_binary() -> PathBuf {
    let path = std::env::var_os("REDISPAIR_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/kubectl"));
    assert!(
        path.is_file(),
        "kubectl not found at {}: run scripts/kube-tools.sh (or set REDISPAIR_KUBECTL)",
        path.display()
    );
    path
}

/// The pinned helm: `$REDISPAIR_HELM`, else `target/tools/helm` of the workspace.
pub fn helm_binary() -> PathBuf {
    let path = std::env::var_os("REDISPAIR_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/helm"));
    assert!(
        path.is_file(),
        "helm not found at {}: run scripts/kube-tools.sh (or set REDISPAIR_HELM)",
        path.display()
    );
    path
}

/// The real kubectl against one server, with a HOME and discovery cache of its own.
pub struct Kubectl {
    binary: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(server: &ApiServer) -> Self {
        let home = tempfile::tempdir().expect("temp HOME");
        let kubeconfig = home.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("kubeconfig written");
        Kubectl {
            binary: kubectl_binary(),
            home,
            kubeconfig,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.home.path()
    }

    /// Writes a manifest into the temp dir and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, contents).expect("manifest written");
        path
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .arg(format!(
                "--cache-dir={}",
                self.home.path().join("cache").display()
            ))
            .env_clear()
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .kill_on_drop(true);
        command
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 60s"))
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns its stdout; fails the test with its stderr when it fails.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {stderr}\n{stdout}"
        );
        assert!(
            !stderr.contains("warning") && !stderr.contains("Warning"),
            "kubectl {args:?} warned: {stderr}"
        );
        stdout
    }

    /// Runs kubectl expecting it to fail; returns its stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            !output.status.success(),
            "kubectl {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// One raw HTTP/1.1 request on a fresh connection; returns the status code and body.
pub async fn http(
    server: &ApiServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connects");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\nAuthorization: Bearer {}\r\n",
        body.len(),
        server.admin_token()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    stream.write_all(body).await.expect("writes body");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap_or_else(|_| {
            panic!("{method} {path}: no complete response in 10s (a hung connection)")
        })
        .expect("reads");
    parse_response(&response)
}

pub fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            out.push_str(&rest[..rest.len().min(size)]);
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// JSON of a raw request, with the status code.
pub async fn http_json(
    server: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let (code, text) = http(
        server,
        method,
        path,
        &[
            ("Content-Type", content_type),
            ("Accept", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (code, value)
}
