//! Expert specialisation: runs a trained model over a corpus and counts, per MoE layer, which
//! experts the tokens of each source document and of each domain (prose or code) are routed to.
//! `moe routes` prints the tables and draws them as heatmaps.

use crate::corpus::Document;
use crate::error::Result;
use crate::model::{Acts, FfnActs, KvCache, Model};
use crate::plot::{render_heatmap, Heatmap};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// Routing counts of token groups: counts[group][moe layer][expert].
#[derive(Clone, Debug)]
pub struct RouteTable {
    pub groups: Vec<String>,
    pub tokens: Vec<u64>,
    pub counts: Vec<Vec<Vec<u64>>>,
}

impl RouteTable {
    fn new(groups: Vec<String>, layers: usize, experts: usize) -> Self {
        let g = groups.len();
        RouteTable { groups, tokens: vec![0; g], counts: vec![vec![vec![0; experts]; layers]; g] }
    }

    /// Share of group g's assignments in layer l that go to each expert.
    pub fn shares(&self, g: usize, l: usize) -> Vec<f64> {
        let row = &self.counts[g][l];
        let total: u64 = row.iter().sum();
        row.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
    }

    /// Total-variation distance between two groups' expert shares in layer l (0 = same routing,
    /// 1 = disjoint experts).
    pub fn distance(&self, a: usize, b: usize, l: usize) -> f64 {
        self.shares(a, l).iter().zip(self.shares(b, l)).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0
    }

    /// Markdown table: one row per group and layer, expert shares in percent.
    pub fn markdown(&self) -> String {
        let (layers, e) = (self.counts[0].len(), self.counts[0].first().map_or(0, |r| r.len()));
        let mut t = String::from("| group | tokens | layer |");
        (0..e).for_each(|x| t += &format!(" E{x} |"));
        t += "\n|---|---:|---:|";
        (0..e).for_each(|_| t += "---:|");
        t += "\n";
        for g in 0..self.groups.len() {
            for l in 0..layers {
                t += &format!("| {} | {} | {l} |", self.groups[g], self.tokens[g]);
                self.shares(g, l).iter().for_each(|s| t += &format!(" {:.1} |", 100.0 * s));
                t += "\n";
            }
        }
        t
    }

    /// Heatmap: rows = (group, layer), columns = experts, colour = share / uniform share.
    pub fn plot(&self, title: &str, path: &Path) -> Result<()> {
        let (layers, e) = (self.counts[0].len(), self.counts[0].first().map_or(0, |r| r.len()));
        let mut rows = vec![];
        let mut labels = vec![];
        for l in 0..layers {
            for g in 0..self.groups.len() {
                labels.push(format!("L{l} {}", short(&self.groups[g])));
                rows.push(self.shares(g, l).iter().map(|s| s * e as f64).collect());
            }
        }
        let hm = Heatmap {
            title: title.into(),
            x_label: "expert".into(),
            row_labels: labels,
            x_range: ("E0".into(), format!("E{}", e.saturating_sub(1))),
            values: rows,
            range: (0.0, 3.0),
        };
        render_heatmap(&hm, path, 900, (60 + 14 * layers * self.groups.len()).clamp(300, 1400))
    }
}

fn short(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.chars().take(18).collect()
}

/// Routes up to `max_tokens` tokens of each document through the model (windows of the model's
/// context, inference mode) and returns the tables by domain (prose, code) and by document.
pub fn analyse(
    model: &Model<f32>,
    params: &[f32],
    tk: &Tokenizer,
    docs: &[Document],
    max_tokens: usize,
) -> Result<(RouteTable, RouteTable)> {
    let cfg = &model.cfg;
    let layers = cfg.num_moe_layers();
    let e = cfg.num_local_experts;
    let t = cfg.max_position_embeddings;
    let mut by_domain = RouteTable::new(vec!["prose".into(), "code".into()], layers, e);
    let mut by_doc = RouteTable::new(docs.iter().map(|d| d.name.clone()).collect(), layers, e);
    let mut acts = Acts::new(cfg, 1, t, t);
    let mut cache = KvCache::new(cfg, 1, t);
    for (di, doc) in docs.iter().enumerate() {
        let (ids, offsets) = tk.encode_with_offsets(&doc.text)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(crate::Error::Tokenizer {
                what: format!("token id {bad} is outside the model's vocabulary of {}", cfg.vocab_size),
                hint: "use the tokenizer saved with the checkpoint".into(),
            });
        }
        let n = ids.len().min(max_tokens);
        for start in (0..n).step_by(t) {
            let end = (start + t).min(n);
            model.forward(params, &mut acts, &mut cache, &ids[start..end], 0);
            let moe = acts.layers.iter().filter_map(|l| match &l.ffn {
                FfnActs::Moe(m) => Some(m),
                FfnActs::Dense { .. } => None,
            });
            for (l, m) in moe.enumerate() {
                let r = m.router.r;
                for (&x, &tok) in m.router.expert[..r].iter().zip(&m.router.token[..r]) {
                    let pos = start + tok as usize;
                    let domain = usize::from(doc.is_code(offsets.get(pos).copied().unwrap_or(0)));
                    by_domain.counts[domain][l][x as usize] += 1;
                    by_doc.counts[di][l][x as usize] += 1;
                }
            }
            for pos in start..end {
                by_domain.tokens[usize::from(doc.is_code(offsets.get(pos).copied().unwrap_or(0)))] += 1;
            }
            by_doc.tokens[di] += (end - start) as u64;
        }
    }
    Ok((by_domain, by_doc))
}
