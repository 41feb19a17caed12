//! A gateway run as its own `gateway serve` process on files that outlive it, so a test can
//! stop it (SIGTERM), kill it (SIGKILL), start it again on the same data and trail, and read
//! what it logged.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{gateway_bin, Builder};

/// A gateway's configuration and key material, written but not running.
pub struct GatewayFiles {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub user_keys: HashMap<String, PathBuf>,
    pub tokens: HashMap<String, String>,
    pub ca_pem: PathBuf,
    /// Where the trail is (`data/audit/audit.jsonl` unless [`GatewayFiles::audit_settings`]
    /// moved it).
    pub audit_path: PathBuf,
    /// Where the local store keeps `tenant`'s objects: `objects/<tenant>/<key>`.
    pub store_root: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Builder {
    /// Write the configuration and key material for [`GatewayFiles::serve`].
    pub fn files(self) -> GatewayFiles {
        let p = self.prepare();
        GatewayFiles {
            audit_path: p.dir.path().join("data/audit/audit.jsonl"),
            store_root: p.dir.path().join("data/store"),
            config_path: p.config_path,
            user_keys: p.user_keys,
            tokens: p.tokens,
            ca_pem: p.ca_pem,
            dir: p.dir,
            runs: std::cell::Cell::new(0),
        }
    }
}

impl GatewayFiles {
    /// Add `lines` to the `[audit]` section (e.g. `append_timeout = "2s"`); a `path` set
    /// here moves the trail.
    pub fn audit_settings(&mut self, lines: &str) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let text = text.replacen("[audit]\n", &format!("[audit]\n{lines}\n"), 1);
        std::fs::write(&self.config_path, text).unwrap();
        let path = lines.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "path").then(|| PathBuf::from(v.trim().trim_matches('"')))
        });
        if let Some(path) = path {
            self.audit_path = path;
        }
    }

    /// Start `gateway serve` on these files; stdout is parsed for the addresses, stderr (with
    /// `RUST_LOG=info`) kept in `serve-<n>.log`.
    pub fn serve(&self) -> ServedGateway {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let log = self.dir.path().join(format!("serve-{n}.log"));
        let mut child = Command::new(gateway_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut https, mut sftp, mut admin) = (None, None, None);
        let want_admin = std::fs::read_to_string(&self.config_path).unwrap_or_default().contains("\n[admin]");
        let deadline = Instant::now() + Duration::from_secs(60);
        while https.is_none() || sftp.is_none() || (want_admin && admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("gateway did not start (or printed no SFTP address):\n{log}");
            };
            if let Some(rest) = line.strip_prefix("gateway listening on https://localhost:") {
                https = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
            }
            if let Some(rest) = line.strip_prefix("SFTP listening on ") {
                sftp = rest.split(';').next().and_then(|a| a.parse::<SocketAddr>().ok());
            }
            if let Some(rest) = line.strip_prefix("admin listening on http://") {
                admin = rest.split('/').next().and_then(|a| a.parse::<SocketAddr>().ok());
            }
        }
        ServedGateway {
            child,
            https_port: https.unwrap(),
            sftp_addr: sftp.unwrap(),
            admin_addr: admin,
            log,
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// Every parseable record of the trail.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Poll the trail until `pred` holds for it (records land as the gateway writes them).
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let records = self.audit();
            if pred(&records) {
                return records;
            }
            assert!(Instant::now() < deadline, "trail never showed {what}:\n{records:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `gateway audit verify` on the trail: (success, output).
    pub fn verify(&self) -> (bool, String) {
        let out = Command::new(gateway_bin()).args(["audit", "verify"]).arg(&self.audit_path).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// The local store's file for `key` of `tenant`.
    pub fn stored(&self, tenant: &str, key: &str) -> PathBuf {
        self.store_root.join("objects").join(tenant).join(key)
    }

    /// OpenSSH client options for `user` against `served`.
    pub fn ssh_options(&self, served: &ServedGateway, user: &str) -> Vec<String> {
        let mut o = Vec::new();
        for opt in [
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "LogLevel=ERROR",
        ] {
            o.push("-o".into());
            o.push(opt.into());
        }
        o.extend(["-P".into(), served.sftp_addr.port().to_string()]);
        o.extend(["-i".into(), self.user_keys[user].display().to_string()]);
        o
    }
}

/// A running `gateway serve`; killed when dropped.
pub struct ServedGateway {
    pub child: Child,
    pub https_port: u16,
    pub sftp_addr: SocketAddr,
    /// The admin listener, when the configuration has an `[admin]` section.
    pub admin_addr: Option<SocketAddr>,
    /// Its stderr.
    pub log: PathBuf,
    ca_pem: PathBuf,
}

impl ServedGateway {
    /// `https://localhost:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    /// A `curl` command trusting the test CA, silent but for errors.
    pub fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "120", "--cacert"]).arg(&self.ca_pem);
        cmd
    }

    /// Send a signal (`TERM`, `KILL`) to the process.
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(st.success(), "kill -{name} failed");
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "gateway did not exit within {limit:?}:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs of `size` mounted at `dir` for the life of the value (the test must run as root,
/// as CI does); unmounted (lazily) when dropped.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount is installed");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: dir.to_owned() }
    }

    /// Fill the file system with a file named `name` until it is full; returns its path.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Single bytes into the last partial page.
        while let Ok(1) = f.write(&[0]) {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
