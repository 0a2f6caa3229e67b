//! The Kubernetes objects of a system: per kind of process a Deployment (probes on
//! `/health/ready` and `/health/live`, resource requests, a non-root, read-only container), a
//! Service, a PodDisruptionBudget; its environment as a Secret, a service's own settings as a
//! ConfigMap (its secret ones in the Secret); the manifest as a Secret (it holds them all); the control plane's state on a volume; the gateway
//! behind a Service of type LoadBalancer.
//!
//! Every address a process registers is its pod's (`$(POD_IP)`, from the downward API), so the
//! registry hands out addresses any pod can reach, as on several hosts (`docs/scale-out.md`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, Secret, SecretEnvSource, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::{Plan, Process, Role, ServicePlan, paths, ports};

/// One object of the rendering, of its own type.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Object {
    Namespace(Box<Namespace>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
}

/// The user the image runs as (the Dockerfile makes it).
const USER: i64 = 10001;

/// The objects that run `plan`, in the order to apply them.
pub fn render(plan: &Plan) -> Vec<Object> {
    let mut out = vec![Object::Namespace(Box::new(Namespace {
        metadata: ObjectMeta {
            name: Some(plan.namespace.clone()),
            labels: Some(part_of(plan)),
            ..Default::default()
        },
        ..Default::default()
    }))];
    // A Secret, not a ConfigMap: the manifest holds every service's settings, secret ones
    // included, and the engines' URLs with their passwords.
    out.push(Object::Secret(Box::new(Secret {
        metadata: meta(plan, "tessera-manifest", "config"),
        string_data: Some([("tessera.toml".to_string(), plan.manifest_text.clone())].into()),
        type_: Some("Opaque".into()),
        ..Default::default()
    })));
    for process in &plan.processes {
        render_process(plan, process, &mut out);
    }
    out
}

fn render_process(plan: &Plan, process: &Process, out: &mut Vec<Object>) {
    let name = match &process.role {
        Role::Control => "tessera-control".to_string(),
        Role::Gateway { .. } => "gateway".to_string(),
        Role::Service(s) => s.name.clone(),
    };
    let mut env_secret: BTreeMap<String, String> = process.env.iter().cloned().collect();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut env_from = vec![EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: format!("{name}-env"),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if !process.identity.is_empty() {
        out.push(file_secret(
            plan,
            &format!("{name}-identity"),
            &process.identity,
        ));
        mount_secret(
            &mut volumes,
            &mut mounts,
            "identity",
            &format!("{name}-identity"),
            paths::IDENTITY_DIR,
        );
    }
    // The root file system is read-only: scratch space of its own.
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(mount("tmp", "/tmp", false));
    let mut pod_env = Vec::new();
    // Pod annotations beyond the scrape ones: what must restart the pods when it changes.
    let mut restart_on = BTreeMap::new();
    let (component, replicas, command, args, container_ports, probe_port, http_probes) =
        match &process.role {
            Role::Control => {
                out.push(Object::PersistentVolumeClaim(Box::new(
                    PersistentVolumeClaim {
                        metadata: meta(plan, "tessera-control-state", "control"),
                        spec: Some(PersistentVolumeClaimSpec {
                            access_modes: Some(vec!["ReadWriteOnce".into()]),
                            resources: Some(VolumeResourceRequirements {
                                requests: Some(
                                    [("storage".to_string(), Quantity("2Gi".into()))].into(),
                                ),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )));
                volumes.push(Volume {
                    name: "state".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: "tessera-control-state".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(mount("state", paths::STATE_DIR, false));
                mount_manifest(&mut volumes, &mut mounts);
                (
                    "control",
                    1,
                    vec![format!("{}/tessera", paths::BIN_DIR)],
                    manifest_args("control"),
                    vec![port("api", ports::CONTROL)],
                    ports::CONTROL,
                    // Under mutual TLS the control plane asks every caller for a certificate,
                    // which the kubelet does not have: its port is probed instead.
                    !plan.mtls,
                )
            }
            Role::Gateway { https, files } => {
                mount_manifest(&mut volumes, &mut mounts);
                if !files.is_empty() {
                    mount_files(plan, files, &mut volumes, &mut mounts, out);
                    restart_on.insert(FILES_ANNOTATION.to_string(), files_digest(files));
                }
                // Each gateway pod named as itself in logs, traces and metrics.
                pod_env = pod_addresses().into_iter().take(3).collect();
                let mut container_ports = vec![
                    port("http", ports::GATEWAY),
                    port("admin", ports::GATEWAY_ADMIN),
                ];
                if !https.is_empty() {
                    out.push(file_secret(plan, "gateway-https", https));
                    mount_secret(
                        &mut volumes,
                        &mut mounts,
                        "https",
                        "gateway-https",
                        paths::HTTPS_DIR,
                    );
                    container_ports.push(port("https", ports::GATEWAY_HTTPS));
                }
                (
                    "gateway",
                    plan.gateways as i32,
                    vec![format!("{}/tessera", paths::BIN_DIR)],
                    manifest_args("gateway"),
                    container_ports,
                    ports::GATEWAY_ADMIN,
                    true,
                )
            }
            Role::Service(service) => {
                service_env(plan, service, &mut env_secret, &mut env_from, out);
                pod_env = pod_addresses();
                if service.embedded_data {
                    volumes.push(Volume {
                        name: "data".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    });
                    mounts.push(mount("data", &format!("{}/data", paths::STATE_DIR), false));
                }
                let (command, args) = program(plan, service);
                (
                    "service",
                    service.replicas as i32,
                    command,
                    args,
                    vec![
                        port("api", ports::SERVICE),
                        port("admin", ports::SERVICE_ADMIN),
                    ],
                    ports::SERVICE_ADMIN,
                    true,
                )
            }
        };
    out.push(Object::Secret(Box::new(Secret {
        metadata: meta(plan, &format!("{name}-env"), component),
        string_data: Some(env_secret),
        type_: Some("Opaque".into()),
        ..Default::default()
    })));
    let probe = |path: &str, delay: i32| Probe {
        http_get: http_probes.then(|| HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(probe_port.into()),
            ..Default::default()
        }),
        tcp_socket: (!http_probes).then(|| TCPSocketAction {
            port: IntOrString::Int(probe_port.into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(delay),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let (cpu, memory, memory_limit) = match component {
        "control" => ("200m", "128Mi", "1Gi"),
        "gateway" => ("200m", "64Mi", "512Mi"),
        _ => ("50m", "64Mi", "512Mi"),
    };
    let container = Container {
        name: name.clone(),
        image: Some(image_of(plan, &process.role)),
        command: Some(command),
        args: (!args.is_empty()).then_some(args),
        env: (!pod_env.is_empty()).then_some(pod_env),
        env_from: Some(env_from),
        ports: Some(container_ports.clone()),
        readiness_probe: Some(probe("/health/ready", 1)),
        liveness_probe: Some(probe("/health/live", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(memory.into())),
                ]
                .into(),
            ),
            limits: Some([("memory".to_string(), Quantity(memory_limit.into()))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Default::default()
    };
    let labels = labels(plan, &name, component);
    let strategy = if component == "control" {
        // One control plane at a time: its state is on a volume one pod mounts.
        DeploymentStrategy {
            type_: Some("Recreate".into()),
            ..Default::default()
        }
    } else {
        // A new pod is ready before an old one goes: no capacity is lost on a rollout.
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    };
    out.push(Object::Deployment(Box::new(Deployment {
        metadata: meta(plan, &name, component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(plan, &name),
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(
                        [
                            ("prometheus.io/scrape".to_string(), "true".to_string()),
                            ("prometheus.io/port".to_string(), probe_port.to_string()),
                        ]
                        .into_iter()
                        .chain(restart_on)
                        .collect(),
                    ),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(USER),
                        fs_group: Some(USER),
                        ..Default::default()
                    }),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })));
    let service_ports: Vec<ServicePort> = container_ports
        .iter()
        .filter(|p| p.name.as_deref() != Some("admin"))
        .map(|p| {
            let public = match (component, p.name.as_deref()) {
                ("gateway", Some("http")) => 80,
                ("gateway", Some("https")) => 443,
                _ => p.container_port,
            };
            ServicePort {
                name: p.name.clone(),
                port: public,
                target_port: Some(IntOrString::Int(p.container_port)),
                ..Default::default()
            }
        })
        .collect();
    out.push(Object::Service(Box::new(Service {
        metadata: meta(plan, &name, component),
        spec: Some(ServiceSpec {
            type_: Some(
                if component == "gateway" {
                    "LoadBalancer"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            selector: Some(selector_labels(plan, &name)),
            ports: Some(service_ports),
            ..Default::default()
        }),
        ..Default::default()
    })));
    out.push(Object::PodDisruptionBudget(Box::new(PodDisruptionBudget {
        metadata: meta(plan, &name, component),
        spec: Some(PodDisruptionBudgetSpec {
            // A node drained takes one pod of each at a time; with several replicas the rest
            // keep serving.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(plan, &name)),
            ..Default::default()
        }),
        ..Default::default()
    })));
}

/// A service's own settings: plain ones in a ConfigMap, secret ones beside its environment.
fn service_env(
    plan: &Plan,
    service: &ServicePlan,
    env_secret: &mut BTreeMap<String, String>,
    env_from: &mut Vec<EnvFromSource>,
    out: &mut Vec<Object>,
) {
    env_secret.extend(service.secret_settings.iter().cloned());
    if service.settings.is_empty() {
        return;
    }
    let settings = format!("{}-settings", service.name);
    out.push(config_map(
        plan,
        &settings,
        service.settings.iter().cloned().collect(),
    ));
    // First, so that what the platform gives wins over a setting of the same name.
    env_from.insert(
        0,
        EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: settings,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
}

/// The pod's own address, and the listeners on it: what a service registers.
fn pod_addresses() -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    vec![
        field("POD_IP", "status.podIP"),
        field("POD_NAME", "metadata.name"),
        value("TESSERA_INSTANCE", "$(POD_NAME)".into()),
        value("TESSERA_LISTEN", format!("$(POD_IP):{}", ports::SERVICE)),
        value(
            "TESSERA_ADMIN_LISTEN",
            format!("$(POD_IP):{}", ports::SERVICE_ADMIN),
        ),
    ]
}

/// A service's program in the image (the manifest's, by its file name), or as written when
/// the service has an image of its own.
fn program(plan: &Plan, service: &ServicePlan) -> (Vec<String>, Vec<String>) {
    let mut argv = service.command.clone();
    if argv.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let args = argv.split_off(1);
    if plan.images.contains_key(&service.name) {
        return (argv, args);
    }
    let file = argv[0].rsplit('/').next().unwrap_or(&argv[0]).to_string();
    (vec![format!("{}/{file}", paths::BIN_DIR)], args)
}

fn image_of(plan: &Plan, role: &Role) -> String {
    match role {
        Role::Service(s) => plan.images.get(&s.name).unwrap_or(&plan.image).clone(),
        _ => plan.image.clone(),
    }
}

fn manifest_args(command: &str) -> Vec<String> {
    vec![
        "--manifest".into(),
        format!("{}/tessera.toml", paths::MANIFEST_DIR),
        command.into(),
    ]
}

/// The manifest's Secret at [`paths::MANIFEST_DIR`]; the kubelet swaps it in place when it
/// changes, and the gateway reloads its routes (`docs/gateway.md`).
fn mount_manifest(volumes: &mut Vec<Volume>, mounts: &mut Vec<VolumeMount>) {
    mount_secret(
        volumes,
        mounts,
        "manifest",
        "tessera-manifest",
        paths::MANIFEST_DIR,
    );
}

/// The pod annotation holding a digest of the gateway's static files: new files are a new
/// pod template, so `kubectl apply` rolls the gateways (each reads its files at start).
pub const FILES_ANNOTATION: &str = "tessera.dev/files-digest";

/// Each `[[files]]` mount as a ConfigMap (`gateway-files-<i>`, binary data under `f<n>` keys,
/// as a key cannot hold a `/`), each file mounted alone at its path under
/// `<FILES_DIR>/<i>` with `subPath`. A whole ConfigMap mounted as a directory would be a tree
/// of symbolic links (the kubelet swaps `..data` to update it), which the gateway never
/// serves; a `subPath` mount is the file itself.
fn mount_files(
    plan: &Plan,
    files: &[BTreeMap<String, Vec<u8>>],
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    out: &mut Vec<Object>,
) {
    for (i, tree) in files.iter().enumerate() {
        let name = format!("gateway-files-{i}");
        let mut data = BTreeMap::new();
        for (n, (path, body)) in tree.iter().enumerate() {
            let key = format!("f{n}");
            mounts.push(VolumeMount {
                name: name.clone(),
                mount_path: format!("{}/{i}/{path}", paths::FILES_DIR),
                sub_path: Some(key.clone()),
                read_only: Some(true),
                ..Default::default()
            });
            data.insert(key, ByteString(body.clone()));
        }
        out.push(Object::ConfigMap(Box::new(ConfigMap {
            metadata: meta(plan, &name, "gateway"),
            binary_data: Some(data),
            ..Default::default()
        })));
        volumes.push(Volume {
            name: name.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}

/// A digest of every mount's paths and bytes (a change detector, not a security check).
fn files_digest(files: &[BTreeMap<String, Vec<u8>>]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn mount_secret(
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
    volume: &str,
    secret: &str,
    at: &str,
) {
    volumes.push(Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            // Read by the container's user through the pod's group (`fs_group`), by nobody else.
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });
    mounts.push(mount(volume, at, true));
}

fn mount(volume: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: at.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn config_map(plan: &Plan, name: &str, data: BTreeMap<String, String>) -> Object {
    Object::ConfigMap(Box::new(ConfigMap {
        metadata: meta(plan, name, "config"),
        data: Some(data),
        ..Default::default()
    }))
}

fn file_secret(plan: &Plan, name: &str, files: &BTreeMap<String, Vec<u8>>) -> Object {
    Object::Secret(Box::new(Secret {
        metadata: meta(plan, name, "identity"),
        data: Some(
            files
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }))
}

fn part_of(plan: &Plan) -> BTreeMap<String, String> {
    [("app.kubernetes.io/part-of".to_string(), plan.system.clone())].into()
}

fn selector_labels(plan: &Plan, name: &str) -> BTreeMap<String, String> {
    let mut labels = part_of(plan);
    labels.insert("app.kubernetes.io/name".into(), name.into());
    labels
}

fn labels(plan: &Plan, name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(plan, name);
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels.insert("app.kubernetes.io/managed-by".into(), "tessera".into());
    labels
}

fn selector(plan: &Plan, name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(plan, name)),
        ..Default::default()
    }
}

fn meta(plan: &Plan, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(plan, name, component)),
        ..Default::default()
    }
}

/// The objects as one YAML stream, `---` between documents.
pub fn to_yaml(objects: &[Object]) -> anyhow::Result<String> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(object)?);
    }
    Ok(out)
}

/// Reads a YAML stream of objects back into their types (what a test checks the rendering
/// with): an object of a kind not rendered here, or one that does not fit its type, is an
/// error naming it.
pub fn parse(yaml: &str) -> anyhow::Result<Vec<Object>> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_norway::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let typed = |e: serde_norway::Error| anyhow::anyhow!("{kind} {name}: {e}");
        out.push(match kind.as_str() {
            "Namespace" => Object::Namespace(serde_norway::from_value(value).map_err(typed)?),
            "ConfigMap" => Object::ConfigMap(serde_norway::from_value(value).map_err(typed)?),
            "Secret" => Object::Secret(serde_norway::from_value(value).map_err(typed)?),
            "PersistentVolumeClaim" => {
                Object::PersistentVolumeClaim(serde_norway::from_value(value).map_err(typed)?)
            }
            "Deployment" => Object::Deployment(serde_norway::from_value(value).map_err(typed)?),
            "Service" => Object::Service(serde_norway::from_value(value).map_err(typed)?),
            "PodDisruptionBudget" => {
                Object::PodDisruptionBudget(serde_norway::from_value(value).map_err(typed)?)
            }
            other => anyhow::bail!("{name}: an object of kind {other:?}"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Process, Role, ServicePlan};

    fn plan(mtls: bool) -> Plan {
        let env = |who: &str| {
            vec![
                (
                    "TESSERA_CONTROL_URL".to_string(),
                    "http://tessera-control:7070".to_string(),
                ),
                (
                    "TESSERA_CREDENTIAL".to_string(),
                    format!("credential-of-{who}"),
                ),
                ("TESSERA_PASSPORT_KEYS".to_string(), "p1:secret".to_string()),
            ]
        };
        let identity: BTreeMap<String, Vec<u8>> = if mtls {
            [(
                "cert.pem".to_string(),
                b"-----BEGIN CERTIFICATE-----".to_vec(),
            )]
            .into()
        } else {
            BTreeMap::new()
        };
        Plan {
            system: "shop".into(),
            namespace: "shop".into(),
            image: "registry.example/shop:1".into(),
            images: [(
                "signals".to_string(),
                "registry.example/signals:1".to_string(),
            )]
            .into(),
            manifest_text: "[system]\nname = \"shop\"\n".into(),
            gateways: 2,
            mtls,
            processes: vec![
                Process {
                    role: Role::Control,
                    env: env("control"),
                    identity: identity.clone(),
                },
                Process {
                    role: Role::Gateway {
                        https: BTreeMap::new(),
                        files: Vec::new(),
                    },
                    env: env("gateway"),
                    identity: identity.clone(),
                },
                Process {
                    role: Role::Service(ServicePlan {
                        name: "catalog".into(),
                        replicas: 3,
                        command: vec!["target/release/shop-catalog".into(), "--quiet".into()],
                        settings: vec![("CATALOG_PAGE".into(), "20".into())],
                        secret_settings: vec![("SMTP_PASSWORD".into(), "hunter2".into())],
                        embedded_data: true,
                    }),
                    env: env("service:catalog"),
                    identity: identity.clone(),
                },
                Process {
                    role: Role::Service(ServicePlan {
                        name: "signals".into(),
                        replicas: 1,
                        command: vec!["python3".into(), "-m".into(), "signals".into()],
                        settings: vec![],
                        secret_settings: vec![],
                        embedded_data: false,
                    }),
                    env: env("service:signals"),
                    identity,
                },
            ],
        }
    }

    fn find<'a, T>(
        objects: &'a [Object],
        name: &str,
        pick: fn(&'a Object) -> Option<&'a T>,
    ) -> &'a T
    where
        T: k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        objects
            .iter()
            .filter_map(pick)
            .find(|o| o.metadata().name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn deployment(o: &Object) -> Option<&Deployment> {
        match o {
            Object::Deployment(d) => Some(d),
            _ => None,
        }
    }

    fn secret(o: &Object) -> Option<&Secret> {
        match o {
            Object::Secret(s) => Some(s),
            _ => None,
        }
    }

    fn service(o: &Object) -> Option<&Service> {
        match o {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn every_object_parses_back_into_its_type_with_probes_resources_and_secrets() {
        let yaml = to_yaml(&render(&plan(false))).unwrap();
        let objects = parse(&yaml).unwrap();
        // Namespace, manifest; per process: env Secret, Deployment, Service, PDB; the control
        // plane's volume; the catalog's settings.
        assert_eq!(objects.len(), 2 + 4 * 4 + 1 + 1, "{yaml}");
        for name in ["tessera-control", "gateway", "catalog", "signals"] {
            let d = find(&objects, name, deployment);
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let c = &pod.containers[0];
            let ready = c
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(ready.path.as_deref(), Some("/health/ready"), "{name}");
            let live = c
                .liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(live.path.as_deref(), Some("/health/live"), "{name}");
            let resources = c.resources.as_ref().unwrap();
            assert!(
                resources.requests.as_ref().unwrap().contains_key("cpu"),
                "{name}"
            );
            assert!(
                resources.limits.as_ref().unwrap().contains_key("memory"),
                "{name}"
            );
            let security = c.security_context.as_ref().unwrap();
            assert_eq!(security.run_as_non_root, Some(true), "{name}");
            assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
            let env = find(&objects, &format!("{name}-env"), secret);
            let values = env.string_data.as_ref().unwrap();
            assert_eq!(values["TESSERA_PASSPORT_KEYS"], "p1:secret", "{name}");
            assert!(values["TESSERA_CREDENTIAL"].starts_with("credential-of-"));
        }
        let catalog = find(&objects, "catalog", deployment);
        let spec = catalog.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            c.command.as_ref().unwrap(),
            &["/usr/local/bin/shop-catalog"]
        );
        assert_eq!(c.args.as_ref().unwrap(), &["--quiet"]);
        assert_eq!(c.image.as_deref(), Some("registry.example/shop:1"));
        let env = c.env.as_ref().unwrap();
        let listen = env.iter().find(|e| e.name == "TESSERA_LISTEN").unwrap();
        assert_eq!(listen.value.as_deref(), Some("$(POD_IP):8000"));
        // A secret setting goes with the secrets, a plain one to the ConfigMap.
        let values = find(&objects, "catalog-env", secret)
            .string_data
            .as_ref()
            .unwrap();
        assert_eq!(values["SMTP_PASSWORD"], "hunter2");
        assert!(!yaml.contains("CATALOG_PAGE: hunter2"));
        // A service of another language keeps its command and its image.
        let signals = find(&objects, "signals", deployment);
        let c = &signals
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.command.as_ref().unwrap(), &["python3"]);
        assert_eq!(c.image.as_deref(), Some("registry.example/signals:1"));
        // The gateway behind a load balancer, on port 80; the rest inside the cluster.
        let gateway = find(&objects, "gateway", service).spec.as_ref().unwrap();
        assert_eq!(gateway.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(gateway.ports.as_ref().unwrap()[0].port, 80);
        let control = find(&objects, "tessera-control", service)
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(control.type_.as_deref(), Some("ClusterIP"));
        assert!(
            objects
                .iter()
                .any(|o| matches!(o, Object::PodDisruptionBudget(p)
            if p.metadata.name.as_deref() == Some("catalog")))
        );
    }

    #[test]
    fn under_mutual_tls_identities_are_mounted_and_the_control_plane_is_probed_on_its_port() {
        let objects = parse(&to_yaml(&render(&plan(true))).unwrap()).unwrap();
        let control = find(&objects, "tessera-control", deployment);
        let c = &control
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let probe = c.readiness_probe.as_ref().unwrap();
        assert!(probe.http_get.is_none() && probe.tcp_socket.is_some());
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == crate::paths::IDENTITY_DIR)
        );
        let identity = find(&objects, "catalog-identity", secret);
        assert!(identity.data.as_ref().unwrap().contains_key("cert.pem"));
    }

    #[test]
    fn static_files_are_a_config_map_each_file_mounted_alone_and_a_change_rolls_the_gateways() {
        let site = |page: &str| {
            BTreeMap::from([
                ("index.html".to_string(), page.as_bytes().to_vec()),
                ("vendor/chart.js".to_string(), vec![0xff, 0x00, 0x7f]),
            ])
        };
        let with = |page: &str| {
            let mut plan = plan(false);
            for p in &mut plan.processes {
                if let Role::Gateway { files, .. } = &mut p.role {
                    *files = vec![site(page)];
                }
            }
            parse(&to_yaml(&render(&plan)).unwrap()).unwrap()
        };
        let objects = with("<h1>v1</h1>");
        let map = objects
            .iter()
            .find_map(|o| match o {
                Object::ConfigMap(c) if c.metadata.name.as_deref() == Some("gateway-files-0") => {
                    Some(c)
                }
                _ => None,
            })
            .expect("the files' ConfigMap");
        let data = map.binary_data.as_ref().unwrap();
        assert_eq!(data["f0"].0, b"<h1>v1</h1>");
        assert_eq!(data["f1"].0, [0xff, 0x00, 0x7f], "bytes kept as they are");
        let gateway = |objects: &[Object]| {
            let d = find(objects, "gateway", deployment);
            d.spec.as_ref().unwrap().template.clone()
        };
        let template = gateway(&objects);
        let mounts: Vec<(String, Option<String>)> = template.spec.as_ref().unwrap().containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.name == "gateway-files-0")
            .map(|m| (m.mount_path.clone(), m.sub_path.clone()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/etc/tessera-files/0/index.html".into(), Some("f0".into())),
                (
                    "/etc/tessera-files/0/vendor/chart.js".into(),
                    Some("f1".into())
                ),
            ]
        );
        let digest = |t: &PodTemplateSpec| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[FILES_ANNOTATION].clone()
        };
        assert_eq!(digest(&template), digest(&gateway(&with("<h1>v1</h1>"))));
        assert_ne!(
            digest(&template),
            digest(&gateway(&with("<h1>v2</h1>"))),
            "new files, a new pod template"
        );
    }

    #[test]
    fn what_is_not_a_rendered_object_is_refused_by_name() {
        let error = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n").unwrap_err();
        assert!(error.to_string().contains("Pod"), "{error}");
        let error =
            parse("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec: 3\n").unwrap_err();
        assert!(error.to_string().contains("Service x"), "{error}");
    }
}
