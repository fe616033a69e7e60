//! The table, CSV, JSON and PNG plot of a benchmark run.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::measure::{Attack, Closed, Point};

#[derive(Serialize)]
pub struct Report {
    pub cpus: String,
    pub secs: u64,
    pub runs: usize,
    pub points: Vec<Point>,
    pub closed: Vec<Closed>,
    pub dataplane_rss: Vec<(u32, u64, u64)>,
    pub umem_bytes_per_queue: u64,
    pub attack: Vec<Attack>,
}

/// The row each server is compared with: xdpdns over AF_XDP answering
/// itself, or forwarding for the forwarding cases.
fn base_of(server: &str) -> &'static str {
    if server.contains("-fwd") {
        "xdpdns-fwd-afxdp"
    } else {
        "xdpdns-afxdp"
    }
}

pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<17} {:>9} {:>11} {:>8} {:>8} {:>7} {:>10}  losses",
        "server", "offered", "answered/s", "answer%", "vs base", "CPU%", "ns CPU/q"
    );
    for p in &r.points {
        let base = r
            .points
            .iter()
            .find(|b| b.server == base_of(&p.server) && b.offered == p.offered)
            .map(|b| b.answered_per_s)
            .unwrap_or(f64::NAN);
        let losses: Vec<String> = p.losses.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "{:<17} {:>9} {:>11.0} {:>7.1}% {:>7.2}x {:>6.0}% {:>10.0}  {}",
            p.server,
            p.offered,
            p.answered_per_s,
            p.answer_ratio * 100.0,
            p.answered_per_s / base,
            p.server_cpu_s * 100.0 / p.secs as f64,
            p.cpu_ns_per_answer,
            losses.join(" ")
        );
    }
    if !r.attack.is_empty() {
        let _ = writeln!(
            s,
            "\nattack (kxdpgun at its maximum from one address, dnsperf from another behind a switch; limit {} q/s per client):",
            crate::servers::ATTACK_QPS
        );
        let _ = writeln!(
            s,
            "{:<17} {:>12} {:>12} {:>14} {:>8} {:>6}",
            "server", "flood sent/s", "flood ans/s", "legit answered", "legit%", "CPU%"
        );
        for a in &r.attack {
            let _ = writeln!(
                s,
                "{:<17} {:>12.0} {:>12.0} {:>8}/{:<6} {:>7.2}% {:>5.0}%",
                a.server,
                a.flood_sent as f64 / a.secs as f64,
                a.flood_answered as f64 / a.secs as f64,
                a.legit_answered,
                a.legit_sent,
                a.legit_ratio * 100.0,
                a.server_cpu_s * 100.0 / a.secs as f64
            );
        }
    }
    let _ = writeln!(s, "\nclosed loop (dnsperf, 8 clients x 64 outstanding):");
    let _ = writeln!(
        s,
        "{:<17} {:>5} {:>10} {:>12} {:>8} {:>10}",
        "server", "", "queries/s", "avg latency", "lost", "ns CPU/q"
    );
    for c in &r.closed {
        let _ = writeln!(
            s,
            "{:<17} {:>5} {:>10.0} {:>10.0}us {:>8} {:>10.0}",
            c.server, c.transport, c.qps, c.avg_latency_us, c.lost, c.cpu_ns_per_answer
        );
    }
    if !r.dataplane_rss.is_empty() {
        let _ = writeln!(
            s,
            "\nxdpdns dataplane memory (UMEM {} KiB per queue):",
            r.umem_bytes_per_queue / 1024
        );
        for (pid, rss, anon) in &r.dataplane_rss {
            let beyond = anon.saturating_sub(r.umem_bytes_per_queue / 1024);
            let _ = writeln!(
                s,
                "  pid {pid}: VmRSS {rss} KiB, RssAnon {anon} KiB, beyond UMEM {beyond} KiB"
            );
        }
    }
    s
}

pub fn csv(r: &Report) -> String {
    let mut s = String::from(
        "server,offered,secs,sent,answered,answered_per_s,answer_ratio,server_cpu_s,cpu_ns_per_answer\n",
    );
    for p in &r.points {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.1},{:.4},{:.3},{:.1}",
            p.server,
            p.offered,
            p.secs,
            p.sent,
            p.answered,
            p.answered_per_s,
            p.answer_ratio,
            p.server_cpu_s,
            p.cpu_ns_per_answer
        );
    }
    s
}

/// Answered/s against offered/s, one line per server.
pub fn plot(r: &Report, path: &Path, font: &[u8]) -> anyhow::Result<()> {
    // SAFETY-free leak: plotters wants a 'static font; one per process.
    let font: &'static [u8] = Box::leak(font.to_vec().into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load the plot font"))?;
    let max_x = r.points.iter().map(|p| p.offered).max().unwrap_or(1) as f64 / 1000.0;
    let max_y = r
        .points
        .iter()
        .map(|p| p.answered_per_s)
        .fold(1.0, f64::max)
        / 1000.0;
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "answered vs offered (kxdpgun; fwd = forwarding to knotd)",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("offered (k queries/s)")
        .y_desc("answered (k queries/s)")
        .draw()?;
    let mut servers: Vec<&str> = r.points.iter().map(|p| p.server.as_str()).collect();
    servers.dedup();
    for (i, server) in servers.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = r
            .points
            .iter()
            .filter(|p| p.server == *server)
            .map(|p| (p.offered as f64 / 1000.0, p.answered_per_s / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))?
            .label(*server)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
