//! Readings from /proc and the environment: CPU time per process and per
//! thread, resident memory, UDP drops, the machine and the git commit.

use crate::*;

pub(crate) fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()));
    json!({"cores": cores, "memory_kib": mem_kib})
}

pub(crate) fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU time the process has used, user and system, in seconds (from
/// /proc: USER_HZ is 100 on every Linux ABI).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time of this process's threads named `comm` (as the kernel shortens
/// it: 15 bytes), e.g. the store's writer thread: every write runs on it, so
/// its CPU per write is the ceiling on writes per second whatever the cores.
pub(crate) fn thread_cpu_seconds(comm: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let s = stat_cpu_seconds(&task.path().join("stat").to_string_lossy())?;
            total = Some(total.unwrap_or(0.0) + s);
        }
    }
    total
}

pub(crate) fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Datagrams the kernel dropped because the UDP socket bound to `addr`
/// (an IPv4 address) had a full receive buffer: the 13th column of
/// /proc/net/udp. A server that falls behind reading its socket loses
/// packets here, and its peers wait out retransmission timers.
pub(crate) fn udp_drops(addr: &str) -> Option<u64> {
    let addr: std::net::SocketAddrV4 = addr.parse().ok()?;
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(addr.ip().octets()), addr.port());
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))?;
    line.split_whitespace().nth(12)?.parse().ok()
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
