//! Reading a server process's CPU time and memory from `/proc`.
//!
//! On a 2-core machine the load generator competes with the server, so throughput alone
//! says little; the server's own CPU time per message is the figure that stays honest.

use std::fs;

/// Linux reports `utime`/`stime` in USER_HZ, a fixed ABI constant of 100 on every mainstream
/// architecture (independent of the kernel's CONFIG_HZ).
const USER_HZ: u64 = 100;
const NS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// One sample of a process's resource use.
#[derive(Copy, Clone, Debug, Default)]
pub struct Sample {
    /// utime + stime of all the process's threads, in nanoseconds (10 ms resolution).
    pub cpu_ns: u64,
    /// The kernel's part of `cpu_ns` (stime): on loopback mostly socket work, which any
    /// server pays for the same traffic; `cpu_ns - sys_ns` is the server's own code.
    pub sys_ns: u64,
    /// Sum of the threads' `schedstat` run time in nanoseconds (exact; 0 when unavailable).
    pub sched_ns: u64,
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
}

/// Samples process `pid`; `None` when it cannot be read (no such process, not Linux).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_stat_cpu_ticks(&stat)?;
    let cpu_ns = (utime + stime).saturating_mul(NS_PER_TICK);
    let sys_ns = stime.saturating_mul(NS_PER_TICK);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = parse_vmrss_kib(&status).unwrap_or(0);
    Some(Sample {
        cpu_ns,
        sys_ns,
        sched_ns: sched_ns(pid),
        rss_kib,
    })
}

/// Samples every process in `pids` and sums them (several cluster nodes); `None` when the list
/// is empty or any of them cannot be read.
pub fn sample_all(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(Sample::default(), |acc, &pid| {
        let s = sample(pid)?;
        Some(Sample {
            cpu_ns: acc.cpu_ns + s.cpu_ns,
            sys_ns: acc.sys_ns + s.sys_ns,
            sched_ns: acc.sched_ns + s.sched_ns,
            rss_kib: acc.rss_kib + s.rss_kib,
        })
    })
}

/// Samples this process (the load generator), for its own CPU use.
pub fn sample_self() -> Option<Sample> {
    sample(std::process::id())
}

/// Sums `/proc/PID/task/*/schedstat` (first field: nanoseconds on a CPU). Threads that
/// exited before the sample are missing, which is why utime+stime stays the primary figure.
fn sched_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// (utime, stime) (fields 14 and 15) from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces or parentheses, so fields are counted after the
/// last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")": field 3 (state) is index 0, so utime (field 14) is index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((250, 17)));
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tx\nVmPeak:\t 10 kB\nVmRSS:\t    4242 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss_kib(status), Some(4242));
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_self().expect("/proc/self is readable on Linux");
        assert!(s.rss_kib > 0);
    }
}
