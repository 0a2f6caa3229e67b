//! `tessera deploy kubernetes` on Tessera Shop's own manifest (`docs/deploy.md`): every object
//! it writes reads back into its Kubernetes type, each process has its Deployment with probes
//! and resources, its Service and its PodDisruptionBudget, the system's keys are in Secrets,
//! the gateway is behind a load balancer; and the Dockerfile builds every program the manifest
//! runs, as a user without privileges.
//!
//! No Kubernetes API server runs here, and `kubectl` checks nothing without one (even
//! `--dry-run=client` asks the server for its API list); nor does a Docker engine (only the
//! client is installed): the objects are checked by their types, the Dockerfile by what it
//! says. Where Docker runs, `docker build -t tessera-shop .` builds it.

use std::path::{Path, PathBuf};

use tessera_deploy::Object;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Renders the shop's manifest, copied into a directory of its own (its keys made there).
fn render(test: &str, args: &[&str]) -> (String, PathBuf, std::process::Output) {
    let dir = std::env::temp_dir().join(format!("tessera-deploy-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join("tessera.toml"), dir.join("tessera.toml")).unwrap();
    let out = dir.join("shop.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("--manifest")
        .arg(dir.join("tessera.toml"))
        .args(["deploy", "kubernetes", "-o"])
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    let yaml = std::fs::read_to_string(&out).unwrap_or_default();
    (yaml, dir, output)
}

#[test]
fn the_shop_renders_as_kubernetes_objects_that_parse_back_into_their_types() {
    let (yaml, dir, output) = render("shop", &["--image", "registry.example/shop:7"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The shop keeps its data in SQLite by default: said plainly.
    assert!(stderr.contains("no database URL"), "{stderr}");
    let objects = tessera_deploy::parse(&yaml).unwrap();
    let manifest = tessera_manifest::Manifest::load(&dir.join("tessera.toml")).unwrap();
    let passport_keys = std::fs::read_to_string(dir.join(".tessera/passport.keys")).unwrap();

    let mut names: Vec<String> = manifest.services.keys().cloned().collect();
    names.extend(["gateway".into(), "tessera-control".into()]);
    for name in &names {
        let deployment = objects
            .iter()
            .find_map(|o| match o {
                Object::Deployment(d) if d.metadata.name.as_ref() == Some(name) => Some(d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Deployment {name}"));
        let spec = deployment.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/shop:7"));
        let ready = c.readiness_probe.as_ref().unwrap();
        let live = c.liveness_probe.as_ref().unwrap();
        // Under the cluster's mutual TLS (on: its addresses are not loopback) the control
        // plane wants a certificate of every caller: its port is probed; the rest by path.
        if name == "tessera-control" {
            assert!(ready.tcp_socket.is_some() && live.tcp_socket.is_some());
        } else {
            let path =
                |p: &k8s_openapi::api::core::v1::Probe| p.http_get.as_ref().unwrap().path.clone();
            assert_eq!(path(ready).as_deref(), Some("/health/ready"), "{name}");
            assert_eq!(path(live).as_deref(), Some("/health/live"), "{name}");
        }
        let requests = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
        if let Some(service) = manifest.services.get(name) {
            assert_eq!(spec.replicas, Some(service.replicas as i32), "{name}");
        }
        let secret = objects
            .iter()
            .find_map(|o| match o {
                Object::Secret(s) if s.metadata.name.as_deref() == Some(&format!("{name}-env")) => {
                    Some(s)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Secret {name}-env"));
        let env = secret.string_data.as_ref().unwrap();
        assert_eq!(env["TESSERA_PASSPORT_KEYS"], passport_keys.trim(), "{name}");
        assert!(env["TESSERA_CONTROL_URL"].ends_with("://tessera-control:7070"));
        for kind in ["Service", "PodDisruptionBudget"] {
            assert!(
                objects.iter().any(|o| match (o, kind) {
                    (Object::Service(s), "Service") => s.metadata.name.as_ref() == Some(name),
                    (Object::PodDisruptionBudget(p), "PodDisruptionBudget") =>
                        p.metadata.name.as_ref() == Some(name),
                    _ => false,
                }),
                "no {kind} {name}"
            );
        }
    }
    let gateway = objects
        .iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some("gateway") => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        gateway.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    // The manifest the cluster reads is a valid one, and only in a Secret: no ConfigMap holds
    // a secret setting.
    let text = objects
        .iter()
        .find_map(|o| match o {
            Object::Secret(c) if c.metadata.name.as_deref() == Some("tessera-manifest") => {
                c.string_data.as_ref()?.get("tessera.toml").cloned()
            }
            _ => None,
        })
        .expect("the manifest's Secret");
    let cluster = tessera_manifest::Manifest::parse(&text).unwrap();
    for o in &objects {
        if let Object::ConfigMap(c) = o {
            let data = serde_json::to_string(&c.data).unwrap();
            assert!(
                !data.contains("PASSWORD") && !data.contains("[system]"),
                "{data}"
            );
        }
    }
    assert_eq!(cluster.routes.len(), manifest.routes.len());
    // It holds secrets: readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("shop.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_service_image_for_a_service_the_manifest_lacks_is_refused() {
    let (_, dir, output) = render("refused", &["--service-image", "nobody=x:1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nobody"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Tessera Invest on Kubernetes: its dashboard's files go with the gateway, and its Python
/// service runs from an image of its own (`examples/invest/signals/Dockerfile`).
#[test]
fn invest_renders_with_its_dashboard_beside_the_gateway_and_its_python_service_in_its_own_image() {
    let dir = std::env::temp_dir().join(format!("tessera-deploy-{}-invest", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let invest = repo().join("examples/invest");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(invest.join("tessera.toml"), dir.join("tessera.toml")).unwrap();
    copy_tree(&invest.join("web"), &dir.join("web"));
    std::fs::write(dir.join("web/.env"), "SECRET=1").unwrap();
    let deploy = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("--manifest")
            .arg(dir.join("tessera.toml"))
            .args(["deploy", "kubernetes", "-o"])
            .arg(dir.join("invest.yaml"))
            .args(args)
            .output()
            .unwrap()
    };
    // Without an image for the Python service, the command says it needs one.
    let output = deploy(&[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("signals not built by Cargo") && stderr.contains("--service-image"),
        "{stderr}"
    );
    let output = deploy(&[
        "--service-image",
        "signals=registry.example/invest-signals:3",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("not built by Cargo"), "{stderr}");
    let yaml = std::fs::read_to_string(dir.join("invest.yaml")).unwrap();
    let objects = tessera_deploy::parse(&yaml).unwrap();

    // The dashboard: a ConfigMap of the files the gateway serves here (not `.env`), each
    // mounted alone where the cluster's manifest says the mount is.
    let files = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some("gateway-files-0") => {
                Some(c)
            }
            _ => None,
        })
        .expect("the dashboard's ConfigMap");
    let data = files.binary_data.as_ref().unwrap();
    let served = tessera_gateway::files::read_tree(&dir.join("web")).unwrap();
    assert_eq!(data.len(), served.len());
    assert!(!served.iter().any(|f| f.path.contains(".env")));
    let gateway = objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name.as_deref() == Some("gateway") => Some(d),
            _ => None,
        })
        .unwrap();
    let pod = gateway
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
    for file in &served {
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == format!("/etc/tessera-files/0/{}", file.path))
            .unwrap_or_else(|| panic!("{} is not mounted", file.path));
        let key = mount.sub_path.as_ref().unwrap();
        assert_eq!(data[key].0, file.body, "{}", file.path);
    }
    let manifest_text = objects
        .iter()
        .find_map(|o| match o {
            Object::Secret(s) if s.metadata.name.as_deref() == Some("tessera-manifest") => {
                s.string_data.as_ref().map(|d| d["tessera.toml"].clone())
            }
            _ => None,
        })
        .unwrap();
    let cluster = tessera_manifest::Manifest::parse(&manifest_text).unwrap();
    assert_eq!(cluster.files[0].dir.to_str(), Some("/etc/tessera-files/0"));

    // The Python service: its image, its command as the manifest writes it.
    let signals = objects
        .iter()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name.as_deref() == Some("signals") => Some(d),
            _ => None,
        })
        .unwrap();
    let c = &signals
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/invest-signals:3")
    );
    assert_eq!(c.command.as_deref(), Some(&["python3".to_string()][..]));
    assert_eq!(
        c.args.as_deref(),
        Some(&["signals/service.py".to_string()][..])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The signals image keeps the repository's layout and runs from the manifest's directory, so
/// the manifest's command and `PYTHONPATH` find the service and the SDK in the pod.
#[test]
fn the_signals_image_holds_what_the_manifests_command_and_pythonpath_point_at() {
    let dockerfile =
        std::fs::read_to_string(repo().join("examples/invest/signals/Dockerfile")).unwrap();
    let manifest =
        tessera_manifest::Manifest::load(&repo().join("examples/invest/tessera.toml")).unwrap();
    let spec = &manifest.services["signals"];
    let line = |word: &str| -> Vec<String> {
        dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix(word))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let workdir = PathBuf::from(line("WORKDIR ").pop().expect("a WORKDIR"));
    let copied: Vec<(String, PathBuf)> = line("COPY ")
        .iter()
        .map(|l| {
            let (from, to) = l.split_once(' ').unwrap();
            (from.to_string(), PathBuf::from(to))
        })
        .collect();
    // `a/../b` as the kernel resolves it, on paths with no links.
    let normal = |p: PathBuf| {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    };
    let sdk = normal(workdir.join(&spec.env["PYTHONPATH"]));
    assert!(
        copied
            .iter()
            .any(|(from, to)| from == "sdk/python/tessera_sdk" && *to == sdk.join("tessera_sdk")),
        "the SDK at {}: {copied:?}",
        sdk.display()
    );
    let script = spec.command.argv()[1].clone();
    let (script_dir, _) = script.rsplit_once('/').unwrap();
    assert!(
        copied.iter().any(
            |(from, to)| from == &format!("examples/invest/{script_dir}")
                && *to == workdir.join(script_dir)
        ),
        "{script} under {}: {copied:?}",
        workdir.display()
    );
    let user = line("USER ").pop().expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
}

#[test]
fn the_dockerfile_builds_every_program_the_manifests_run_and_runs_them_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2
    );
    for manifest in ["tessera.toml", "examples/invest/tessera.toml"] {
        let manifest = tessera_manifest::Manifest::load(&repo().join(manifest)).unwrap();
        for spec in manifest.services.values() {
            let program = &spec.command.argv()[0];
            if !program.contains("target/release/") {
                continue; // another language's, in an image of its own
            }
            let program = program.rsplit('/').next().unwrap();
            assert!(
                dockerfile.contains(&format!("-p {program}")),
                "{program} is not built"
            );
        }
    }
    assert!(dockerfile.contains("-p tessera-cli"));
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(
        !user.contains("root") && !user.trim_end().ends_with(" 0"),
        "{user}"
    );
    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l == "**/.tessera"),
        "every state directory (keys), Invest's under examples/ too, stays out"
    );
}
