//! What Linux says about the server processes, the bench and the machine
//! (`/proc`): CPU time and memory.

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User plus system CPU time of a process (`"self"` or a pid), in clock
/// ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and total CPU ticks of the whole machine (`/proc/stat`; busy is all
/// but idle and iowait).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4)?;
    Some((total - idle, total))
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// The servers' resident memory together.
pub fn total_rss(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| status_bytes(p, "VmRSS")).sum()
}

/// The largest peak resident memory (`VmHWM`) of the servers.
pub fn peak_rss(pids: &[u32]) -> Option<u64> {
    pids.iter().filter_map(|&p| status_bytes(p, "VmHWM")).max()
}

/// CPU ticks used so far by the servers (summed), the bench, and the
/// machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    servers: Option<u64>,
    bench: Option<u64>,
    machine_busy: Option<u64>,
}

impl CpuSnapshot {
    pub fn take(pids: &[u32]) -> Self {
        let servers = if pids.is_empty() {
            None
        } else {
            pids.iter()
                .map(|p| cpu_ticks(&p.to_string()))
                .sum::<Option<u64>>()
        };
        Self {
            servers,
            bench: cpu_ticks("self"),
            machine_busy: machine_ticks().map(|(busy, _)| busy),
        }
    }
}

/// CPU seconds used between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsed {
    pub servers: Option<f64>,
    pub bench: Option<f64>,
    pub machine: Option<f64>,
}

impl CpuUsed {
    pub fn between(before: &CpuSnapshot, after: &CpuSnapshot) -> Self {
        let ticks = clock_ticks();
        let seconds = |a: Option<u64>, b: Option<u64>| Some(b?.checked_sub(a?)? as f64 / ticks);
        Self {
            servers: seconds(before.servers, after.servers),
            bench: seconds(before.bench, after.bench),
            machine: seconds(before.machine_busy, after.machine_busy),
        }
    }

    /// CPU seconds of everything else on the machine: neither the servers
    /// nor the bench.
    pub fn others(&self) -> Option<f64> {
        Some((self.machine? - self.servers? - self.bench?).max(0.0))
    }
}
