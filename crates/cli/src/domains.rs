//! `stackyard domains add|ls|verify|rm SLUG …`: a stack's custom hostnames and the DNS records
//! that prove them.

use crate::api::{Api, Request, unexpected_answer};
use crate::error::Result;
use crate::output::{Cell, Out, table};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use stackyard_api::{AddDomainRequest, DomainAnswer, DomainItem, DomainList, DomainRemoved};

#[derive(Debug, clap::Subcommand)]
pub enum DomainsAction {
    /// Add HOSTNAME to the stack and print the DNS records to create.
    Add {
        /// The stack id (`stk-…`).
        slug: String,
        /// The hostname (`app.example.com`).
        hostname: String,
    },
    /// The stack's domains and their state.
    Ls {
        /// The stack id (`stk-…`).
        slug: String,
    },
    /// Look the domain's TXT record up now; once it is found the domain is routed.
    Verify {
        /// The stack id (`stk-…`).
        slug: String,
        /// The domain id (`dom_…`) or its hostname.
        domain: String,
    },
    /// Remove a domain (its route goes with it).
    Rm {
        /// The stack id (`stk-…`).
        slug: String,
        /// The domain id (`dom_…`) or its hostname.
        domain: String,
    },
}

pub async fn run(api: &Api, out: &Out, action: DomainsAction) -> Result<()> {
    match action {
        DomainsAction::Add { slug, hostname } => {
            let slug = crate::args::parse_slug(&slug)?;
            let req = Request::new(Method::POST, format!("/api/v1/stacks/{slug}/domains"))
                .json(&AddDomainRequest { hostname });
            let doc: Value = api.send_json(&req).await?;
            let added = DomainAnswer::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
            if out.json {
                out.json_line(&doc);
                return Ok(());
            }
            let d = &added.domain;
            out.println(&format!("{} {} ({})", d.id, d.hostname, d.status));
            out.println(&records(out, d));
            out.note(&format!(
                "Create these records at your DNS provider, then run `stackyard domains verify {slug} {}`.",
                d.hostname
            ));
            Ok(())
        }
        DomainsAction::Ls { slug } => {
            let slug = crate::args::parse_slug(&slug)?;
            let doc: Value = api
                .send_json(&Request::get(format!("/api/v1/stacks/{slug}/domains")))
                .await?;
            let list = DomainList::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
            if out.json {
                out.json_line(&doc);
                return Ok(());
            }
            let rows: Vec<Vec<Cell>> = list
                .items
                .iter()
                .map(|d| {
                    // A certificate's expiry, else why the last order failed.
                    let certificate = d
                        .certificate_expires_at
                        .as_deref()
                        .map(|t| format!("until {t}"))
                        .or_else(|| d.certificate_error.clone())
                        .unwrap_or_default();
                    vec![
                        Cell::plain(d.id.as_str()),
                        Cell::plain(d.hostname.as_str()),
                        Cell::status(d.status.as_str()),
                        Cell::plain(d.last_check_err.as_deref().unwrap_or("")),
                        Cell::plain(certificate),
                    ]
                })
                .collect();
            out.println(&table(
                out,
                &["ID", "HOSTNAME", "STATUS", "LAST CHECK", "CERTIFICATE"],
                &rows,
            ));
            Ok(())
        }
        DomainsAction::Verify { slug, domain } => {
            let slug = crate::args::parse_slug(&slug)?;
            let id = domain_id(api, &slug, &domain).await?;
            let req = Request::new(
                Method::POST,
                format!("/api/v1/stacks/{slug}/domains/{id}/verify"),
            );
            let doc: Value = api.send_json(&req).await?;
            let checked = DomainAnswer::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
            if out.json {
                out.json_line(&doc);
                return Ok(());
            }
            let d = &checked.domain;
            out.println(&format!("{} {}", d.hostname, d.status));
            if let Some(err) = &d.last_check_err {
                out.warn(&format!("not verified yet: {err}"));
                out.println(&records(out, d));
            }
            Ok(())
        }
        DomainsAction::Rm { slug, domain } => {
            let slug = crate::args::parse_slug(&slug)?;
            let id = domain_id(api, &slug, &domain).await?;
            let req = Request::new(
                Method::DELETE,
                format!("/api/v1/stacks/{slug}/domains/{id}"),
            );
            let doc: Value = api.send_json(&req).await?;
            let gone = DomainRemoved::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
            if out.json {
                out.json_line(&doc);
            } else {
                out.println(&format!("{} removed", gone.id));
            }
            Ok(())
        }
    }
}

/// The records to create, as a table.
fn records(out: &Out, d: &DomainItem) -> String {
    let rows: Vec<Vec<Cell>> = [&d.verification.txt, &d.verification.cname]
        .into_iter()
        .map(|r| {
            vec![
                Cell::plain(r.record_type.as_str()),
                Cell::plain(r.record_name.as_str()),
                Cell::plain(r.record_value.as_str()),
            ]
        })
        .collect();
    table(out, &["TYPE", "NAME", "VALUE"], &rows)
}

/// A domain named by id or hostname.
async fn domain_id(api: &Api, slug: &str, domain: &str) -> Result<String> {
    if domain.starts_with("dom_") {
        return Ok(domain.to_owned());
    }
    let doc: Value = api
        .send_json(&Request::get(format!("/api/v1/stacks/{slug}/domains")))
        .await?;
    let list = DomainList::deserialize(&doc).map_err(|e| unexpected_answer(&e))?;
    let wanted = domain.trim_end_matches('.').to_ascii_lowercase();
    list.items
        .into_iter()
        .find(|d| d.hostname == wanted)
        .map(|d| d.id)
        .ok_or_else(|| crate::error::CliError::other(format!("{slug} has no domain {domain}")))
}
