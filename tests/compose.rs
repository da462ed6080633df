//! `docker-compose.yml` and its images, checked as far as a machine without a Docker engine
//! allows: the compose file is parsed and validated by a real compose implementation (Debian's
//! docker-compose 1.29, `config`), its services, start order and health checks are the ones the
//! README promises, and what the images copy in exists. The container's admetrics configuration
//! is loaded by the daemon's own (strict) config loader.

mod support;

use std::process::Command;

use support::repo_root;

fn compose(args: &[&str]) -> String {
    let out = Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["-f", "docker-compose.yml"])
        .args(args)
        .output()
        .expect(
            "docker-compose not found: run scripts/setup.sh (installs Debian's docker-compose)",
        );
    assert!(
        out.status.success(),
        "docker-compose {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_compose_file_is_valid_and_starts_things_in_order() {
    compose(&["config", "-q"]);
    let mut services: Vec<String> = compose(&["config", "--services"])
        .lines()
        .map(str::to_string)
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            "admetrics",
            "iceberg-rest",
            "kafka",
            "kafka-init",
            "loadgen",
            "maintenance",
            "minio",
            "minio-init",
            "redis",
            "superset"
        ]
    );
    let full = compose(&["config"]);
    // The normalised file: every long-running service has a health check, and each waits for
    // what it needs (Kafka healthy → topic created → host ready → load generator and Superset).
    let section = |name: &str| -> String {
        // A service's block: from "  name:" to the next line indented by exactly two spaces.
        let mut lines = full.lines().skip_while(|l| *l != format!("  {name}:"));
        let head = lines.next().unwrap_or_else(|| panic!("service {name}"));
        let body: Vec<&str> = lines
            .take_while(|l| l.starts_with("   ") || l.trim().is_empty())
            .collect();
        format!("{head}\n{}", body.join("\n"))
    };
    for s in [
        "kafka",
        "minio",
        "iceberg-rest",
        "admetrics",
        "redis",
        "superset",
    ] {
        assert!(
            section(s).contains("healthcheck:"),
            "{s} has no healthcheck"
        );
    }
    let needs = [
        ("kafka-init", "kafka", "service_healthy"),
        ("minio-init", "minio", "service_healthy"),
        (
            "iceberg-rest",
            "minio-init",
            "service_completed_successfully",
        ),
        ("admetrics", "kafka-init", "service_completed_successfully"),
        ("admetrics", "iceberg-rest", "service_healthy"),
        ("loadgen", "admetrics", "service_healthy"),
        ("maintenance", "admetrics", "service_healthy"),
        ("superset", "admetrics", "service_healthy"),
        ("superset", "redis", "service_healthy"),
    ];
    for (who, what, cond) in needs {
        let s = section(who);
        let dep = s
            .find("depends_on:")
            .unwrap_or_else(|| panic!("{who}: no depends_on"));
        let deps = &s[dep..];
        assert!(
            deps.contains(&format!("{what}:")) && deps.contains(cond),
            "{who} must wait for {what} ({cond}):\n{s}"
        );
    }
    assert!(
        section("admetrics").contains("/opt/admetrics/plugins.d"),
        "drop-in plugin directory mounted"
    );
    assert!(full.contains("apache/kafka:"), "the official Kafka image");
    assert!(
        full.contains("apache/iceberg-rest-fixture:"),
        "Apache's REST catalog"
    );
    assert!(full.contains("minio/minio:"), "MinIO");
    // Superset's DuckDB reads the same REST catalog and bucket the daemon writes.
    let superset = section("superset");
    for want in [
        "--rest-uri",
        "http://iceberg-rest:8181",
        "http://minio:9000",
        "s3://warehouse/",
        // Superset's caches in the compose file's Redis (dashboard/superset_config.py).
        "ADMETRICS_REDIS_URL: redis://redis:6379/0",
    ] {
        assert!(
            superset.contains(want),
            "superset: {want} missing:\n{superset}"
        );
    }
}

#[test]
fn the_images_copy_what_exists_and_the_container_config_loads() {
    let root = repo_root();
    // The build context leaves out build outputs, venvs, fetched jars and local tables.
    let ignored: Vec<String> = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    for heavy in ["target", ".state", ".tools", ".venv", ".venv-*", ".git"] {
        assert!(
            ignored.iter().any(|p| p == heavy),
            ".dockerignore does not exclude {heavy}"
        );
    }
    for dockerfile in [
        "Dockerfile",
        "dashboard/Dockerfile",
        "scripts/maintain.Dockerfile",
    ] {
        let text = std::fs::read_to_string(root.join(dockerfile)).unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        {
            let parts: Vec<&str> = line.split_whitespace().collect();
            for src in &parts[1..parts.len() - 1] {
                assert!(
                    root.join(src).exists(),
                    "{dockerfile}: COPY source {src} does not exist"
                );
                if let Some(p) = ignored.iter().find(|p| src.starts_with(p.as_str())) {
                    panic!("{dockerfile}: COPY source {src} is excluded by .dockerignore ({p})");
                }
            }
        }
    }
    let cfg = admetrics::config::Config::load(&root.join("config/compose.toml"))
        .expect("config/compose.toml loads with the daemon's strict loader");
    assert_eq!(cfg.kafka.brokers, "kafka:9092");
    assert!(cfg.iceberg.is_rest() && cfg.iceberg.catalog_uri == "http://iceberg-rest:8181");
    assert_eq!(
        cfg.iceberg.warehouse,
        std::path::Path::new("s3://warehouse/")
    );
    assert_eq!(cfg.iceberg.properties["s3.endpoint"], "http://minio:9000");
    assert_eq!(cfg.http.listen.as_deref(), Some("0.0.0.0:9464"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    for p in &cfg.plugins.paths {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            dockerfile.contains(&format!("release/{name}")),
            "the image does not bake in {name}"
        );
        assert!(p.starts_with("/opt/admetrics/plugins"));
    }
    assert_eq!(
        cfg.plugins.dir.as_deref(),
        Some(std::path::Path::new("/opt/admetrics/plugins.d"))
    );
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    assert!(compose.contains("\"9464:9464\"") && compose.contains("http://127.0.0.1:9464/ready"));
}
