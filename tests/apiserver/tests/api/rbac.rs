//! Least privilege, proven (issue 11): ServiceAccount tokens are held to the RBAC objects the
//! server holds, with the real 401 and 403 answers, through kube-rs and through kubectl.

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use test_apiserver::{ApiServer, Options};

use crate::support::{Kubectl, RedisPair, RedisPairSpec, client, install_crd};

async fn client_with_token(server: &ApiServer, token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml_with_token(token))
        .expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("loads");
    kube::Client::try_from(config).expect("client")
}

fn forbidden(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        other => panic!("expected a 403, got {other:?}"),
    }
}

/// A ServiceAccount `sa` in `default` bound to what redis-pair's sidecar and controller use.
async fn grant(admin: &kube::Client) {
    let accounts: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "sa"}})).expect("sa"),
        )
        .await
        .expect("sa");
    let roles: Api<Role> = Api::default_namespaced(admin.clone());
    let role = json!({"metadata": {"name": "pairs"}, "rules": [
        {"apiGroups": ["redispair.io"], "resources": ["redispairs"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["redispair.io"], "resources": ["redispairs/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["auth"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"], "resourceNames": ["p"]}
    ]});
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).expect("role"),
        )
        .await
        .expect("role");
    let bindings: Api<RoleBinding> = Api::default_namespaced(admin.clone());
    let binding = json!({"metadata": {"name": "pairs"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pairs"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "default"}]});
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).expect("binding"),
        )
        .await
        .expect("binding");
}

#[tokio::test]
async fn a_service_account_token_gets_exactly_what_its_roles_grant() {
    let server = crate::support::server().await;
    let admin = client(&server).await;
    install_crd(&admin).await;
    grant(&admin).await;
    let pairs: Api<RedisPair> = Api::default_namespaced(admin.clone());
    pairs
        .create(
            &PostParams::default(),
            &RedisPair::new(
                "a",
                RedisPairSpec {
                    port: 6379,
                    replicas: None,
                },
            ),
        )
        .await
        .expect("pair");
    let secrets: Api<Secret> = Api::default_namespaced(admin.clone());
    for name in ["auth", "other"] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).expect("secret"),
            )
            .await
            .expect("secret");
    }
    let sa = client_with_token(&server, &server.service_account_token("default", "sa")).await;
    let as_sa: Api<RedisPair> = Api::default_namespaced(sa.clone());
    assert_eq!(
        as_sa
            .list(&ListParams::default())
            .await
            .expect("list allowed")
            .items
            .len(),
        1
    );
    let status = as_sa
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"master": "a-0"}})),
        )
        .await;
    status.expect("status patch allowed");
    assert_eq!(
        forbidden(as_sa.patch("a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}}))).await),
        (403, "redispairs.redispair.io \"a\" is forbidden: User \"system:serviceaccount:default:sa\" cannot patch resource \"redispairs\" in API group \"redispair.io\" in the namespace \"default\"".into())
    );
    let status_read = as_sa.get_status("a").await;
    assert_eq!(
        forbidden(status_read).0,
        403,
        "get on redispairs does not cover redispairs/status"
    );
    let pods: Api<Pod> = Api::default_namespaced(sa.clone());
    assert_eq!(
        forbidden(pods.list(&ListParams::default()).await),
        (403, "pods is forbidden: User \"system:serviceaccount:default:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"".into())
    );
    pods.list(&ListParams::default().fields("metadata.name=p"))
        .await
        .expect("a list pinned to an allowed name");
    let elsewhere: Api<RedisPair> = Api::namespaced(sa.clone(), "kube-system");
    assert_eq!(
        forbidden(elsewhere.list(&ListParams::default()).await).0,
        403,
        "a Role grants in its own namespace"
    );
    let sa_secrets: Api<Secret> = Api::default_namespaced(sa.clone());
    sa_secrets
        .get("auth")
        .await
        .expect("resourceNames allows auth");
    assert_eq!(forbidden(sa_secrets.get("other").await).0, 403);
    // Impersonation is itself authorized: the ServiceAccount may not act as anyone else.
    let token = server.service_account_token("default", "sa");
    let (code, body) = raw_get(
        &server,
        "/api/v1/namespaces/default/pods",
        &token,
        Some("admin"),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("status")["message"],
        "users \"admin\" is forbidden: User \"system:serviceaccount:default:sa\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    // A token stops working when its ServiceAccount goes; an unknown one never did.
    let accounts: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    accounts
        .delete("sa", &Default::default())
        .await
        .expect("deleted");
    let gone = as_sa.list(&ListParams::default()).await;
    assert!(
        matches!(gone, Err(kube::Error::Api(ref s)) if s.code == 401 && s.reason == "Unauthorized"),
        "{gone:?}"
    );
    let stranger = client_with_token(&server, "not-a-token").await;
    let refused = Api::<Pod>::default_namespaced(stranger)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 401),
        "{refused:?}"
    );
}

#[tokio::test]
async fn kubectl_over_tls_sees_rbac_through_tokens_impersonation_and_can_i() {
    let server = ApiServer::start(Options {
        tls: true,
        ..Options::default()
    })
    .await
    .expect("TLS server");
    assert!(server.url().starts_with("https://"));
    let kubectl = Kubectl::new(&server);
    // Typed-client creates (protobuf bodies) of the RBAC kinds and a ServiceAccount.
    kubectl.ok(&["create", "serviceaccount", "sa"]).await;
    let denied = kubectl
        .run(&[
            "auth",
            "can-i",
            "list",
            "secrets",
            "--as=system:serviceaccount:default:sa",
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&denied.stdout).trim(), "no");
    assert!(!denied.status.success());
    kubectl
        .ok(&[
            "create",
            "role",
            "secret-reader",
            "--verb=get,list,watch",
            "--resource=secrets",
        ])
        .await;
    kubectl
        .ok(&[
            "create",
            "rolebinding",
            "secret-reader",
            "--role=secret-reader",
            "--serviceaccount=default:sa",
        ])
        .await;
    assert_eq!(
        kubectl
            .ok(&[
                "auth",
                "can-i",
                "list",
                "secrets",
                "--as=system:serviceaccount:default:sa"
            ])
            .await
            .trim(),
        "yes"
    );
    let elsewhere = kubectl
        .run(&[
            "auth",
            "can-i",
            "list",
            "secrets",
            "-n",
            "kube-system",
            "--as=system:serviceaccount:default:sa",
        ])
        .await;
    assert_eq!(
        String::from_utf8_lossy(&elsewhere.stdout).trim(),
        "no",
        "a RoleBinding grants in its own namespace"
    );
    kubectl
        .ok(&["get", "secrets", "--as=system:serviceaccount:default:sa"])
        .await;
    let error = kubectl
        .fails(&["get", "pods", "--as=system:serviceaccount:default:sa"])
        .await;
    assert_eq!(
        error.trim(),
        "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:default:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // The ServiceAccount's own token, from the TokenRequest API.
    let token = kubectl.ok(&["create", "token", "sa"]).await;
    let as_sa = kubectl.file(
        "sa.kubeconfig",
        &server.kubeconfig_yaml_with_token(token.trim()),
    );
    let as_sa = format!("--kubeconfig={}", as_sa.display());
    kubectl.ok(&["get", "secrets", &as_sa]).await;
    assert_eq!(
        kubectl
            .ok(&[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
                &as_sa
            ])
            .await
            .trim(),
        "system:serviceaccount:default:sa"
    );
    let error = kubectl.fails(&["delete", "secret", "x", &as_sa]).await;
    assert!(error.contains("secrets \"x\" is forbidden: User \"system:serviceaccount:default:sa\" cannot delete resource \"secrets\""), "{error}");
}

#[tokio::test]
async fn kube_rs_over_tls_trusts_the_kubeconfig_ca_and_no_token_is_anonymous() {
    let server = ApiServer::start(Options {
        tls: true,
        ..Options::default()
    })
    .await
    .expect("TLS server");
    let admin = client(&server).await;
    Api::<Pod>::default_namespaced(admin)
        .list(&ListParams::default())
        .await
        .expect("the admin over TLS");
    let anonymous_yaml = server
        .kubeconfig_yaml_with_token("")
        .replace("  user:\n    token: \n", "  user: {}\n");
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&anonymous_yaml).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("loads");
    let anonymous = kube::Client::try_from(config).expect("client");
    assert_eq!(
        forbidden(Api::<Pod>::default_namespaced(anonymous.clone()).list(&ListParams::default()).await),
        (403, "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"".into())
    );
    let version = anonymous
        .apiserver_version()
        .await
        .expect("/version is public");
    assert_eq!(version.minor, "33");
}

/// A GET with a bearer token and, optionally, an `Impersonate-User` header.
async fn raw_get(
    server: &ApiServer,
    path: &str,
    token: &str,
    impersonate: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connects");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
    );
    if let Some(user) = impersonate {
        request.push_str(&format!("Impersonate-User: {user}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("reads");
    crate::support::parse_response(&response)
}
