//! A `chitty client` process on a pseudo-terminal, as a person runs it: the
//! line editor is active, and what it draws is played into a terminal
//! emulator (`vt100`) so that tests check the screen a user sees, not the
//! raw bytes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::{CHITTY, ChildGuard, DEADLINE, test_command};

/// Rows and columns of the pseudo-terminal.
pub const ROWS: u16 = 60;
pub const COLUMNS: u16 = 100;

struct State {
    screen: vt100::Parser,
    /// Everything the process wrote, as text (escape sequences included).
    raw: String,
    closed: bool,
}

/// A process whose standard streams are a pseudo-terminal.
pub struct PtyProcess {
    pub child: ChildGuard,
    master: File,
    state: Arc<(Mutex<State>, Condvar)>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts `chitty ARGS...` on a fresh pseudo-terminal (its controlling
/// terminal, in a session of its own), with `env` set.
pub fn spawn_on_pty(args: &[&str], env: &[(&str, &str)]) -> PtyProcess {
    let (master, slave) = open_pty();
    let mut cmd = test_command(Command::new(CHITTY));
    cmd.args(args)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(Stdio::from(slave.try_clone().expect("dup the pty")))
        .stdout(Stdio::from(slave.try_clone().expect("dup the pty")))
        .stderr(Stdio::from(slave));
    for (key, value) in env {
        cmd.env(key, value);
    }
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start chitty on a pty");
    // The parent's copies of the slave are closed now (moved into `cmd`,
    // dropped with it), so the reader sees EOF (EIO) when the child exits.
    drop(cmd);
    let state = Arc::new((
        Mutex::new(State {
            screen: vt100::Parser::new(
                std::num::NonZeroU16::new(ROWS).expect("rows"),
                std::num::NonZeroU16::new(COLUMNS).expect("columns"),
                0,
            ),
            raw: String::new(),
            closed: false,
        }),
        Condvar::new(),
    ));
    let mut reader = master.try_clone().expect("dup the pty master");
    let mut answer = master.try_clone().expect("dup the pty master");
    let shared = state.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let (state, cond) = &*shared;
            let mut s = lock(state);
            s.screen.process(&buf[..n]);
            let text = String::from_utf8_lossy(&buf[..n]);
            // The line editor asks where the cursor is; a terminal answers.
            if text.contains("\x1b[6n") {
                let (row, col) = s.screen.screen().cursor_position();
                let _ = write!(answer, "\x1b[{};{}R", row + 1, col + 1);
            }
            s.raw.push_str(&text);
            cond.notify_all();
        }
        let (state, cond) = &*shared;
        lock(state).closed = true;
        cond.notify_all();
    });
    PtyProcess {
        child: ChildGuard::new(child, format!("chitty {}", args.join(" "))),
        master,
        state,
    }
}

fn open_pty() -> (File, File) {
    let mut master = -1;
    let mut slave = -1;
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLUMNS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two file descriptors, which we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // Neither end may leak into other processes the tests start: the
    // master would keep the terminal open after the client exits.
    for fd in [master, slave] {
        // SAFETY: fcntl on descriptors we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both descriptors were just opened and are owned by no one else.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(master)),
            File::from(OwnedFd::from_raw_fd(slave)),
        )
    }
}

impl PtyProcess {
    /// Types `keys` (use "\r" for Enter, "\x1b[A" for Up).
    pub fn type_keys(&mut self, keys: &str) {
        self.master
            .write_all(keys.as_bytes())
            .expect("write to the pty");
        self.master.flush().expect("flush the pty");
    }

    /// The screen as the user sees it now, one line per row, without
    /// trailing blanks.
    pub fn screen(&self) -> String {
        lock(&self.state.0).screen.screen().contents()
    }

    /// Everything written so far, escape sequences included.
    pub fn raw(&self) -> String {
        lock(&self.state.0).raw.clone()
    }

    /// Waits until the screen satisfies `pred`; fails after [`DEADLINE`]
    /// showing the screen.
    pub fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let (state, cond) = &*self.state;
        let deadline = Instant::now() + DEADLINE;
        let mut guard = lock(state);
        loop {
            let screen = guard.screen.screen().contents();
            if pred(&screen) {
                return screen;
            }
            let now = Instant::now();
            if now >= deadline || guard.closed {
                panic!(
                    "{} waiting for {what}; the screen:\n{screen}",
                    if guard.closed {
                        "the terminal closed"
                    } else {
                        "timed out"
                    }
                );
            }
            guard = cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until `text` is on the screen.
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_screen(&format!("{text:?} on the screen"), |s| s.contains(text))
    }

    /// Waits until the process wrote `text` (escape sequences included).
    pub fn wait_raw(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let (state, cond) = &*self.state;
        let deadline = Instant::now() + DEADLINE;
        let mut guard = lock(state);
        loop {
            if pred(&guard.raw) {
                return guard.raw.clone();
            }
            let now = Instant::now();
            if now >= deadline || guard.closed {
                panic!("waiting for {what}; the output:\n{:?}", guard.raw);
            }
            guard = cond
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory effects; the pid is our child's.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The master side's descriptor (for a test that closes it).
    pub fn master_fd(&self) -> i32 {
        self.master.as_raw_fd()
    }
}
