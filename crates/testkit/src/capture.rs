//! What crossed the wire: tcpdump on an interface while a test's traffic runs, and the TCP
//! payloads of the packets the test picks, for checks such as "no passport in clear".
//!
//! Every TCP packet is captured (this machine's kernel filter drops port expressions) in
//! immediate mode (packets handed over as they come, not a second later, when tcpdump may
//! have been stopped already), and picked out here. Needs root and tcpdump.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

/// One TCP packet's addresses and ports.
#[derive(Clone, Copy, Debug)]
pub struct Packet {
    pub from: (Ipv4Addr, u16),
    pub to: (Ipv4Addr, u16),
}

/// Captures on `interface` while `traffic` runs; the pcap file's bytes.
pub async fn during(interface: &str, traffic: impl std::future::Future<Output = ()>) -> Vec<u8> {
    let file: PathBuf =
        std::env::temp_dir().join(format!("tessera-{}.pcap", uuid::Uuid::new_v4().simple()));
    let mut tcpdump = tokio::process::Command::new("tcpdump")
        .args([
            "-i",
            interface,
            "-Z",
            "root",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&file)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tcpdump runs (CI installs it)");
    // Ready once it says it listens.
    let mut err = tokio::io::BufReader::new(tcpdump.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).await.expect("tcpdump") > 0,
            "tcpdump: {line}"
        );
    }
    traffic.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    crate::signal(tcpdump.id().expect("tcpdump's pid"), libc::SIGINT);
    let _ = tcpdump.wait().await;
    let bytes = std::fs::read(&file).expect("the capture");
    let _ = std::fs::remove_file(&file);
    bytes
}

/// The TCP payloads of the packets `pick` keeps, in a pcap of Ethernet frames (IPv4).
pub fn payloads(pcap: &[u8], pick: impl Fn(Packet) -> bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 24; // the file's header
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        // Ethernet (14 bytes), then IPv4 with its header length, then TCP with its own.
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ip_len = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 6 || ip.len() < ip_len + 20 {
            continue;
        }
        let tcp = &ip[ip_len..];
        let packet = Packet {
            from: (
                Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                u16::from_be_bytes([tcp[0], tcp[1]]),
            ),
            to: (
                Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            ),
        };
        if pick(packet) {
            let tcp_len = usize::from(tcp[12] >> 4) * 4;
            out.extend_from_slice(tcp.get(tcp_len..).unwrap_or_default());
        }
    }
    out
}

/// Whether `haystack` holds `needle`, ASCII case ignored.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
