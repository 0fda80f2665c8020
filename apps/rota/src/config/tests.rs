//! The configuration's tests: defaults, files, the environment, refusals.

use super::*;
use figment::Jail;

/// The default config, on etcd.
fn on_etcd() -> Config {
    let mut config = Config::default();
    config.coordination.backend = CoordinationBackend::Etcd;
    config
}

/// Asserts that `config` is refused with an error that names `what`.
fn refused(config: &Config, what: &str) {
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains(what), "{err}");
}

#[test]
fn file_then_environment_override_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "rota.toml",
            "[cluster]\npartitions = 24\n[api]\nlisten = \"127.0.0.1:7000\"\n",
        )?;
        jail.set_env("ROTA_API__LISTEN", "127.0.0.1:9000");
        jail.set_env("ROTA_STORAGE__URL", "/tmp/x.db");
        let config = Config::load(Some(Path::new("rota.toml"))).unwrap();
        assert_eq!(config.cluster.partitions, 24);
        assert_eq!(config.api.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.storage.url, "/tmp/x.db");
        assert_eq!(config.worker.concurrency, 16);
        Ok(())
    });
}

#[cfg(unix)]
#[test]
fn a_world_readable_file_with_secrets_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("rota-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let secret = "[http]\nsecret = \"0123456789abcdef0123\"\n";
    let url = "[storage]\nurl = \"postgres://rota:hunter2@db/rota\"\n";
    let warned = Config::secrets_readable_by_all(&write("open.toml", secret, 0o644)).unwrap();
    assert!(
        warned.contains("http.secret") && !warned.contains("0123"),
        "{warned}"
    );
    let warned = Config::secrets_readable_by_all(&write("url.toml", url, 0o644)).unwrap();
    assert!(
        warned.contains("storage.url") && !warned.contains("hunter2"),
        "{warned}"
    );
    assert_eq!(
        Config::secrets_readable_by_all(&write("closed.toml", secret, 0o600)),
        None
    );
    let plain = "[storage]\nurl = \"postgres://rota@db/rota\"\n";
    assert_eq!(
        Config::secrets_readable_by_all(&write("plain.toml", plain, 0o644)),
        None
    );
}

#[test]
fn the_shipped_configuration_files_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // The file alone: other tests of this process set ROTA_* variables.
            let figment =
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(&path));
            Config::extract(figment).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            loaded += 1;
        }
    }
    assert!(loaded >= 2, "no configuration files in {}", dir.display());
}

/// `configs/dev.toml` says it holds every key with its default: each key of the default
/// configuration is there, set or commented out, in its section.
#[test]
fn the_dev_configuration_names_every_key() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/dev.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut named: std::collections::BTreeSet<String> = Default::default();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            named.insert(format!("{section}.{}", key.trim()));
        }
    }
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let mut missing = Vec::new();
    for (section, keys) in defaults.as_object().unwrap() {
        for key in keys.as_object().into_iter().flat_map(|k| k.keys()) {
            if !named.contains(&format!("{section}.{key}")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "configs/dev.toml lacks {missing:?}");
}

#[test]
fn schedules_in_the_file_are_read_and_checked() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "rota.toml",
            "[[schedules]]\nname = \"nightly\"\ncron = \"30 2 * * *\"\n\
             time_zone = \"Europe/Berlin\"\n[schedules.task]\nname = \"report\"\n\
             payload = { kind = \"daily\" }\n\
             [[schedules]]\nname = \"beat\"\nevery = \"30s\"\nmissed_ticks = \"skip\"\n\
             [schedules.task]\nname = \"beat\"\n",
        )?;
        let config = Config::load(Some(Path::new("rota.toml"))).unwrap();
        let def = config.schedules[0].definition(0).unwrap();
        assert_eq!(
            (def.spec.as_str(), def.zone.as_str()),
            ("30 2 * * *", "Europe/Berlin")
        );
        assert_eq!(def.task.payload, serde_json::json!({"kind": "daily"}));
        assert_eq!(def.task.max_attempts, 3);
        let beat = config.schedules[1].definition(0).unwrap();
        assert_eq!(beat.spec, "every 30s");
        assert_eq!(beat.missed, rota_scheduler::schedule::MissedTicks::Skip);
        jail.create_file(
            "bad.toml",
            "[[schedules]]\nname = \"feb30\"\ncron = \"0 0 30 2 *\"\n[schedules.task]\nname = \"x\"\n",
        )?;
        let err = format!(
            "{:#}",
            Config::load(Some(Path::new("bad.toml"))).unwrap_err()
        );
        assert!(
            err.contains("schedules[0]") && err.contains("never fires"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn invalid_values_name_their_key() {
    Jail::expect_with(|jail| {
        jail.set_env("ROTA_CLUSTER__PARTITIONS", "0");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("cluster.partitions"), "{err}");
        jail.set_env("ROTA_CLUSTER__PARTITIONS", "many");
        let err = Config::load(None).unwrap_err().to_string().to_lowercase();
        assert!(err.contains("cluster.partitions"), "{err}");
        jail.set_env("ROTA_CLUSTER__PARTITIONS", "4");
        jail.set_env("ROTA_COORDINATION__BACKEND", "consul");
        let err = Config::load(None).unwrap_err().to_string().to_lowercase();
        assert!(err.contains("coordination.backend"), "{err}");
        Ok(())
    });
}

/// `ROTA_TOKEN` (what clients send) and `ROTA_SIM_*` (the simulator's) may be set in the
/// shell that starts a role; a mistyped setting is still refused.
#[test]
fn variables_that_are_not_settings_are_left_alone() {
    Jail::expect_with(|jail| {
        jail.set_env("ROTA_TOKEN", "rota_abc");
        jail.set_env("ROTA_SIM_SEEDS", "3000");
        jail.set_env("ROTA_API__LISTEN", "127.0.0.1:9000");
        let config = Config::load(None).unwrap();
        assert_eq!(config.api.listen, "127.0.0.1:9000".parse().unwrap());
        jail.set_env("ROTA_API_LISTEN", "127.0.0.1:9001");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("API_LISTEN"), "{err}");
        Ok(())
    });
}

#[test]
fn the_etcd_prefix_is_checked() {
    let mut config = on_etcd();
    config.coordination.prefix = "/tenant-a/rota".into();
    config.validate().unwrap();
    config.coordination.prefix = "tenant".into();
    refused(&config, "coordination.prefix");
    config.coordination.backend = CoordinationBackend::Zookeeper;
    config.coordination.prefix = "/tenant".into();
    refused(&config, "chroot");
}

#[test]
fn etcd_credentials_come_in_pairs() {
    let mut config = on_etcd();
    config.coordination.username = Some("rota".into());
    refused(&config, "coordination.password");
    config.coordination.password = Some("s3cret".into());
    config.validate().unwrap();
    config.coordination.backend = CoordinationBackend::Zookeeper;
    config.validate().unwrap();
    config.coordination.backend = CoordinationBackend::Memory;
    refused(&config, "for etcd and ZooKeeper");
}

#[test]
fn endpoints_are_a_list_or_comma_separated() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("ROTA_COORDINATION__ENDPOINTS", "h1:2181, h2:2181");
        let config = Config::load(None).unwrap();
        assert_eq!(config.coordination.endpoints, ["h1:2181", "h2:2181"]);
        jail.set_env("ROTA_COORDINATION__ENDPOINTS", "127.0.0.1:2379");
        let config = Config::load(None).unwrap();
        assert_eq!(config.coordination.endpoints, ["127.0.0.1:2379"]);
        jail.set_env("ROTA_COORDINATION__ENDPOINTS", r#"["h3:2181"]"#);
        let config = Config::load(None).unwrap();
        assert_eq!(config.coordination.endpoints, ["h3:2181"]);
        Ok(())
    });
}

#[test]
fn a_postgres_backend_needs_a_postgres_url() {
    let mut config = Config::default();
    config.storage.backend = StorageBackend::Postgres;
    config.storage.url = "mysql://root:secret@db/rota".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("storage.url") && !err.contains("secret"),
        "{err}"
    );
    config.storage.url = "postgres://rota@db/rota".into();
    config.validate().unwrap();
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact_url("postgres://rota:s3cret@db:5432/rota"),
        "postgres://rota:***@db:5432/rota"
    );
    assert_eq!(redact_url("rota-data/tasks.db"), "rota-data/tasks.db");
    assert_eq!(redact_url("postgres://db/rota"), "postgres://db/rota");
}
