//! Issue 21, point 7: `deploy/kubernetes/`. The manifests validate against
//! the Kubernetes API's schemas (kubernetes-validate, strict: unknown
//! fields fail; `tests/deploy/validate.py`) and the PodMonitor against
//! prometheus-operator's API types (`tests/deploy/node/
//! podmonitor_check.mjs`); they agree with each other and with the
//! proxy's config (ports, probe path, grace period, Secret keys); and the
//! ConfigMap's `pgtenant.toml`, rendered by the ConfigMap's own
//! `render.sh` as the init container does, passes the real
//! `pgtenant check`.
//!
//! `tests/deploy/install.sh` installs the validators (`.ci/run` calls it).
//! Without them a test prints a loud SKIPPED message and passes, unless
//! `CI` is set, where a missing validator is a failure.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `Ok` when `program args` runs and succeeds; `Err` says why not.
fn probe(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

/// `false` (after a loud message) when a validator is missing outside CI;
/// a failure under CI.
fn have(what: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if in_ci() => {
            panic!("{what} missing under CI ({why}): run tests/deploy/install.sh")
        }
        Err(why) => {
            eprintln!("SKIPPED: {what} missing ({why}); run tests/deploy/install.sh");
            false
        }
    }
}

fn have_python_validator() -> bool {
    have(
        "kubernetes-validate",
        probe("python3", &["-c", "import kubernetes_validate, yaml"]),
    )
}

fn have_node_validator() -> bool {
    let pkg = root()
        .join("tests/deploy/node/node_modules/@kubernetes-models/prometheus-operator/package.json");
    let ts = root().join("tests/deploy/node/node_modules/typescript/package.json");
    let installed = if pkg.is_file() && ts.is_file() {
        probe("node", &["--version"])
    } else {
        Err("tests/deploy/node/node_modules is not installed".into())
    };
    have(
        "@kubernetes-models/prometheus-operator and typescript",
        installed,
    )
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait")
}

fn validate_py(dir: &Path) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/deploy/validate.py")).arg(dir);
    run(cmd, None)
}

/// validate.py's output for the real manifests, once per test binary:
/// `None` when the validator is missing (outside CI).
fn validated() -> Option<&'static (Output, Value)> {
    static V: OnceLock<Option<(Output, Value)>> = OnceLock::new();
    V.get_or_init(|| {
        if !have_python_validator() {
            return None;
        }
        let out = validate_py(&manifests_dir());
        let dump = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "validate.py printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        Some((out, dump))
    })
    .as_ref()
}

/// Every resource, as validate.py read it.
fn resources() -> Option<Vec<Value>> {
    let (_, dump) = validated()?;
    Some(
        dump["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["resource"].clone())
            .collect(),
    )
}

/// The one resource of `kind`.
fn one(resources: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = resources.iter().filter(|r| r["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in deploy/kubernetes/");
    found[0].clone()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn int(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// The `@name@` placeholders outside comments.
fn placeholders(template: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in template
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        let parts: Vec<&str> = line.split('@').collect();
        for (i, p) in parts.iter().enumerate() {
            let closed = i % 2 == 1 && i + 1 < parts.len();
            let name_like = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if closed && name_like {
                out.insert((*p).to_owned());
            }
        }
    }
    out
}

/// Stand-in secret values for a test render: generated, never committed.
fn stand_in(key: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    if key == "auth-secret" {
        // 64 hex digits, as `openssl rand -hex 32` gives.
        format!("{:032x}{:032x}", nanos, nanos.rotate_left(64) ^ 0x5a5a)
    } else {
        format!("test-{key}-{nanos:x}")
    }
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some((out, dump)) = validated() else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "validate.py:\n{stderr}");
    eprintln!(
        "{} against Kubernetes {}",
        dump["validator"], dump["versions"]
    );
    let resources = resources().expect("validated");
    let kinds: BTreeSet<&str> = resources.iter().map(|r| text(&r["kind"], "kind")).collect();
    let want: BTreeSet<&str> =
        ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service"].into();
    assert_eq!(kinds, want);
    for kind in want {
        one(&resources, kind);
    }
    // kustomization.yaml names every manifest.
    let listed: BTreeSet<&str> = dump["kustomization"]["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|f| text(f, "kustomization resource"))
        .collect();
    let files: BTreeSet<&str> = dump["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| text(&r["file"], "file"))
        .collect();
    assert_eq!(listed, files, "kustomization.yaml vs the manifests");

    // The validator is strict: a misspelled field fails.
    let broken = tempfile::tempdir().expect("tempdir");
    let deployment =
        std::fs::read_to_string(manifests_dir().join("deployment.yaml")).expect("deployment.yaml");
    assert!(deployment.contains("periodSeconds:"));
    std::fs::write(
        broken.path().join("deployment.yaml"),
        deployment.replacen("periodSeconds:", "periodSecnds:", 1),
    )
    .expect("write");
    let out = validate_py(broken.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a misspelled field passed");
    assert!(stderr.contains("periodSecnds"), "{stderr}");
}

#[test]
fn podmonitor_matches_prometheus_operator_types() {
    let Some(resources) = resources() else {
        return;
    };
    if !have_node_validator() {
        return;
    }
    let monitors: Vec<Value> = resources
        .into_iter()
        .filter(|r| r["kind"] == "PodMonitor")
        .collect();
    assert_eq!(monitors.len(), 1);
    let check = |input: &[Value]| {
        let mut cmd = Command::new("node");
        cmd.arg(root().join("tests/deploy/node/podmonitor_check.mjs"));
        let json = serde_json::to_vec(input).expect("json");
        run(cmd, Some(&json))
    };
    // A misspelled field (accepted by the generated validator alone) must
    // fail: the check is not vacuous. Run alongside the real one.
    let mut broken = monitors.clone();
    let endpoint = broken[0]["spec"]["podMetricsEndpoints"][0]
        .as_object_mut()
        .expect("endpoint");
    let interval = endpoint.remove("interval").expect("interval");
    endpoint.insert("intervall".into(), interval);
    let (good, bad) = std::thread::scope(|s| {
        let bad = s.spawn(|| check(&broken));
        (check(&monitors), bad.join().expect("join"))
    });
    assert!(
        good.status.success(),
        "podmonitor_check.mjs:\n{}",
        String::from_utf8_lossy(&good.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&good.stdout));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "a misspelled field passed");
    assert!(stderr.contains("intervall"), "{stderr}");
}

#[test]
fn manifests_agree_with_each_other_and_the_config() {
    let Some(resources) = resources() else {
        return;
    };
    let cm = one(&resources, "ConfigMap");
    let secret = one(&resources, "Secret");
    let deploy = one(&resources, "Deployment");
    let service = one(&resources, "Service");
    let monitor = one(&resources, "PodMonitor");
    let template = text(&cm["data"]["pgtenant.toml"], "pgtenant.toml");

    // Every placeholder has a Secret key, and every key but auth-secret
    // (a file, not a placeholder) is used; every value is a placeholder.
    let keys: BTreeSet<String> = secret["stringData"]
        .as_object()
        .expect("the Secret's stringData")
        .iter()
        .map(|(k, v)| {
            assert_eq!(v, "REPLACE-ME", "secret.yaml holds placeholders only: {k}");
            k.clone()
        })
        .collect();
    let mut wanted = placeholders(template);
    wanted.insert("auth-secret".into());
    assert_eq!(
        keys, wanted,
        "the Secret's keys vs the template's placeholders"
    );

    // The config, with stand-ins for its secrets.
    let mut rendered = template.to_owned();
    for key in &keys {
        rendered = rendered.replace(&format!("@{key}@"), &stand_in(key));
    }
    let (cfg, _) = pgtenant::config::parse_str(&rendered, "configmap.yaml").expect("valid config");
    let admin = cfg.admin.as_ref().expect("[admin]");
    let admin_listen: std::net::SocketAddr = admin
        .listen
        .as_deref()
        .expect("admin.listen")
        .parse()
        .expect("admin.listen");
    let listen: std::net::SocketAddr = cfg.proxy.listen.parse().expect("proxy.listen");
    assert!(listen.ip().is_unspecified() && admin_listen.ip().is_unspecified());
    assert!(admin.token.is_some(), "/metrics and /reload need the token");
    assert!(template.contains("token = \"@admin-token@\""));

    // The pod.
    let pod = &deploy["spec"]["template"];
    let spec = &pod["spec"];
    let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port = |name: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| int(&p["containerPort"], name))
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port("postgres"), u64::from(listen.port()));
    assert_eq!(port("admin"), u64::from(admin_listen.port()));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    // Grace period: the preStop sleep, then the proxy's drain.
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop exec");
    assert_eq!(pre_stop[0], "/bin/sleep");
    let sleep: u64 = text(&pre_stop[1], "sleep").parse().expect("sleep seconds");
    let grace = int(&spec["terminationGracePeriodSeconds"], "grace period");
    assert!(
        grace > sleep + cfg.proxy.shutdown_timeout.as_secs(),
        "terminationGracePeriodSeconds {grace} <= preStop {sleep} s + shutdown_timeout {:?}",
        cfg.proxy.shutdown_timeout
    );

    // Volumes: the template and render.sh from the ConfigMap, the Secret,
    // the rendered file where the proxy is told to read it.
    let volume = |kind: &str, key: &str| {
        spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v.get(kind).is_some())
            .map(|v| (text(&v["name"], "volume").to_owned(), v[kind][key].clone()))
            .unwrap_or_else(|| panic!("no {kind} volume"))
    };
    let (template_vol, cm_name) = volume("configMap", "name");
    let (secret_vol, secret_name) = volume("secret", "secretName");
    let (run_vol, _) = volume("emptyDir", "medium");
    assert_eq!(cm_name, cm["metadata"]["name"]);
    assert_eq!(secret_name, secret["metadata"]["name"]);
    let mount = |container: &Value, volume: &str| {
        container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .map(|m| text(&m["mountPath"], "mountPath").to_owned())
            .unwrap_or_else(|| panic!("{} does not mount {volume}", container["name"]))
    };
    let init = &spec["initContainers"].as_array().expect("initContainers")[0];
    assert_eq!(
        init["image"], c["image"],
        "the init container runs the proxy's image"
    );
    let render = format!("{}/render.sh", mount(init, &template_vol));
    assert_eq!(init["command"], serde_json::json!(["/bin/sh", render]));
    // render.sh's default paths are the mounts, in both containers.
    let script = text(&cm["data"]["render.sh"], "render.sh");
    for container in [init, c] {
        let t = mount(container, &template_vol);
        let s = mount(container, &secret_vol);
        let r = mount(container, &run_vol);
        assert!(script.contains(&format!("PGTENANT_TEMPLATE:-{t}/pgtenant.toml")));
        assert!(script.contains(&format!("PGTENANT_SECRETS:-{s}}}")));
        assert!(script.contains(&format!("PGTENANT_RUN:-{r}}}")));
        assert_eq!(
            cfg.proxy.secret_file.as_deref(),
            Some(Path::new(&format!("{r}/pgtenant.secret")))
        );
    }
    assert_eq!(
        c["args"],
        serde_json::json!(["-c", format!("{}/pgtenant.toml", mount(c, &run_vol))])
    );

    // Non-root, read-only root, and the image's user (Dockerfile).
    let sc = &spec["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    let uid = int(&sc["runAsUser"], "runAsUser");
    assert_ne!(uid, 0);
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.lines().any(|l| l == format!("USER {uid}:{uid}")),
        "the Dockerfile's USER is not {uid}"
    );
    for container in [init, c] {
        let sc = &container["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
    }

    // The Service reaches the proxy port of these pods.
    let selected = |selector: &Value| {
        selector
            .as_object()
            .expect("selector")
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selected(&service["spec"]["selector"]));
    let sp = &service["spec"]["ports"][0];
    assert_eq!(sp["targetPort"], "postgres");
    assert_eq!(int(&sp["port"], "service port"), 6432);
    assert_eq!(service["spec"]["sessionAffinity"], "ClientIP");

    // The PodMonitor scrapes these pods' admin port with the token the
    // config requires.
    assert!(selected(&monitor["spec"]["selector"]["matchLabels"]));
    let ep = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "admin");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["authorization"]["type"], "Bearer");
    assert_eq!(
        ep["authorization"]["credentials"],
        serde_json::json!({"name": secret["metadata"]["name"], "key": "admin-token"})
    );
}

#[test]
fn the_configmaps_config_renders_and_passes_pgtenant_check() {
    let Some(resources) = resources() else {
        return;
    };
    let cm = one(&resources, "ConfigMap");
    let secret = one(&resources, "Secret");
    let dir = tempfile::tempdir().expect("tempdir");
    let (template, secrets, out) = (
        dir.path().join("template"),
        dir.path().join("secrets"),
        dir.path().join("run"),
    );
    for d in [&template, &secrets, &out] {
        std::fs::create_dir(d).expect("mkdir");
    }
    std::fs::write(
        template.join("pgtenant.toml"),
        text(&cm["data"]["pgtenant.toml"], "pgtenant.toml"),
    )
    .expect("write");
    let script = template.join("render.sh");
    std::fs::write(&script, text(&cm["data"]["render.sh"], "render.sh")).expect("write");
    // The Secret's files as the kubelet mounts them (mode 0440).
    let write_secrets = |value: &dyn Fn(&str, &str) -> String| {
        for (key, v) in secret["stringData"].as_object().expect("stringData") {
            let path = secrets.join(key);
            // Read-only from the last round (and for a non-root owner).
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, value(key, text(v, key))).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).expect("chmod");
        }
    };
    let bin = Path::new(env!("CARGO_BIN_EXE_pgtenant"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let render = || {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&script)
            .env("PGTENANT_TEMPLATE", template.join("pgtenant.toml"))
            .env("PGTENANT_SECRETS", &secrets)
            .env("PGTENANT_RUN", &out)
            .env("PATH", &path);
        run(cmd, None)
    };

    // As shipped (placeholders): refused before the proxy could start.
    write_secrets(&|_, v| v.to_owned());
    let o = render();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "rendered with REPLACE-ME secrets");
    assert!(stderr.contains("still REPLACE-ME"), "{stderr}");
    assert!(!out.join("pgtenant.toml").exists());

    // A value that could break out of its TOML string: refused.
    write_secrets(&|k, _| {
        if k == "acme-app-password" {
            "x\" \nadmin = \"y".into()
        } else {
            stand_in(k)
        }
    });
    let o = render();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "rendered a value with a quote");
    assert!(
        stderr.contains("acme-app-password holds a character"),
        "{stderr}"
    );

    // Real-looking values: rendered, and `pgtenant check` accepts it.
    write_secrets(&|k, _| stand_in(k));
    let o = render();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "render.sh failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok (2 placements, 3 tenants)"),
        "pgtenant check said:\n{stdout}\n{stderr}"
    );
    let rendered = std::fs::read_to_string(out.join("pgtenant.toml")).expect("rendered");
    assert!(placeholders(&rendered).is_empty(), "{rendered}");
    let password = std::fs::read_to_string(secrets.join("acme-db-password")).expect("read");
    assert!(rendered.contains(&format!("password='{password}'")));
    for file in ["pgtenant.toml", "pgtenant.secret"] {
        let mode = std::fs::metadata(out.join(file))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others: {mode:o}");
    }
    // And the real binary, run as the pod runs it, reads it.
    let check = Command::new(bin)
        .args(["check", "-c"])
        .arg(out.join("pgtenant.toml"))
        .output()
        .expect("pgtenant check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The image's build stage runs benches/pgo-build.sh and copies what it
/// writes; nothing runs the Dockerfile here (no daemon in CI), so this
/// keeps the two from drifting apart: the script it names exists and is
/// executable, and the path it copies is the script's output.
#[test]
fn the_dockerfiles_pgo_build_copies_what_the_script_writes() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.lines().any(|l| l == "ARG PGO=1"),
        "PGO is not the image's default"
    );
    let script = "benches/pgo-build.sh";
    let call = format!("{script} && cp target/pgo/pgtenant /usr/local/bin/pgtenant");
    assert!(
        dockerfile.contains(&call),
        "the Dockerfile does not run `{call}`"
    );
    let path = root().join(script);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path)
            .expect("pgo-build.sh")
            .permissions(),
    );
    assert!(mode & 0o111 != 0, "{script} is not executable");
    let text = std::fs::read_to_string(&path).expect("pgo-build.sh");
    assert!(
        text.contains("OUT=${OUT:-$ROOT/target/pgo}"),
        "{script} writes elsewhere"
    );
    assert!(text.contains(r#"cp "$OUT/use/release/pgtenant" "$OUT/pgtenant""#));
    // What the script needs and the stage installs: the packages on the
    // build stage's apt-get line itself (the first; the words also
    // appear in comments and paths).
    let build_stage = &dockerfile[..dockerfile.find("# ---- runtime").expect("runtime stage")];
    let install = build_stage
        .lines()
        .find(|l| l.contains("apt-get install"))
        .expect("the build stage's apt-get install");
    let packages: Vec<&str> = install.split_whitespace().collect();
    for package in ["postgresql", "openssl"] {
        assert!(
            packages.contains(&package),
            "the build stage does not install {package}"
        );
    }
    assert!(build_stage.contains("rustup component add llvm-tools"));
}
