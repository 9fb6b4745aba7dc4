//! `make install` lays out the binary, the systemd unit and the sample configuration, and
//! never overwrites a configuration that is already there.

use std::path::Path;
use std::process::Command;

/// `make install-files` (the part of `make install` after the build) into `destdir`.
fn install(destdir: &Path) {
    let output = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("install-files")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BIN={}", env!("CARGO_BIN_EXE_depot")))
        .output()
        .expect("make is installed");
    assert!(
        output.status.success(),
        "make install-files failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn make_install_lays_out_binary_unit_and_config_without_overwriting_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    install(root);

    use std::os::unix::fs::PermissionsExt;
    let binary = root.join("usr/local/bin/depot");
    let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("depot "));

    let unit = std::fs::read_to_string(root.join("etc/systemd/system/depot.service")).unwrap();
    for line in [
        "User=depot",
        "ExecStart=/usr/local/bin/depot serve --config /etc/depot/depot.toml",
        "StateDirectory=depot",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/depot",
        "LimitNOFILE=65536",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }

    let config = root.join("etc/depot/depot.toml");
    let sample = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        sample,
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/depot.toml"))
            .unwrap()
    );
    // That it parses and passes the secure default: config::tests::the_packaged_sample_parses.

    // A second install keeps the operator's edits.
    std::fs::write(&config, "# edited\n").unwrap();
    install(root);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# edited\n");
}
