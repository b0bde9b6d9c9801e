//! Peer processes that never outlive their test binary: each runs under a small watchdog shell
//! that kills it (and removes its scratch directory, if given) once the test process is gone —
//! shared instances live in `static`s, which are never dropped.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// A running peer process; killed (with its watchdog) when dropped.
pub struct Watched {
    child: Option<Child>,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    scratch: Option<PathBuf>,
    dir: Option<PathBuf>,
}

const WATCHDOG: &str = r#""$PROGRAM" "$@" & p=$!
trap 'kill -TERM $p 2>/dev/null; wait $p; exit $?' TERM INT
while kill -0 "$WATCHED_PID" 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.2; done
kill -9 $p 2>/dev/null; wait $p; status=$?
# The test process is gone: its scratch directory (often in /dev/shm, in memory) goes too.
if [ -n "$SCRATCH" ] && ! kill -0 "$WATCHED_PID" 2>/dev/null; then rm -rf "$SCRATCH"; fi
exit $status"#;

impl Watched {
    /// Starts `program` with `args`, its stdout and stderr appended to `log`. `scratch`, if
    /// given, is removed once the test process has exited.
    pub fn spawn(
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, &str)],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Watched {
        let mut watched = Watched::new(program, args, env, log, scratch);
        watched.start();
        watched
    }

    /// As [`Watched::spawn`], with `dir` as the working directory.
    pub fn spawn_in(
        dir: &Path,
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, &str)],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Watched {
        let mut watched = Watched::new(program, args, env, log, scratch);
        watched.dir = Some(dir.to_path_buf());
        watched.start();
        watched
    }

    fn new(
        program: &Path,
        args: Vec<OsString>,
        env: &[(&str, &str)],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Watched {
        Watched {
            child: None,
            program: program.to_path_buf(),
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: log.to_path_buf(),
            scratch: scratch.map(Path::to_path_buf),
            dir: None,
        }
    }

    /// Starts the process again with the same arguments (after [`Watched::kill`]).
    pub fn start(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let mut command = Command::new("sh");
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .args(&self.args)
            .env("PROGRAM", &self.program)
            .env("WATCHED_PID", std::process::id().to_string())
            .env("SCRATCH", self.scratch.as_deref().unwrap_or(Path::new("")))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// The exit status, once the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The process group of the watchdog and its child (signal it with `kill -SIG -- -PGID`).
    pub fn process_group(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the process and its watchdog (e.g. SIGSTOP to freeze a peer). On
    /// SIGTERM or SIGINT the watchdog waits for the process to end as it chooses.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, signal);
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The watchdog and its child share a process group led by the watchdog.
            let group = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.kill();
    }
}
