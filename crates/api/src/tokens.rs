//! `/api/v1/whoami` and `/api/v1/tokens*`.

use crate::schema::time;
use serde::{Deserialize, Serialize};
use stackyard_core::model::{Principal, Team, TokenInfo};
use utoipa::ToSchema;

/// A team as its callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeamInfo {
    pub id: i64,
    pub name: String,
    /// `null`: no cap.
    #[schema(required = true)]
    pub max_stacks: Option<i64>,
}

impl From<&Team> for TeamInfo {
    fn from(t: &Team) -> Self {
        Self {
            id: t.id.0,
            name: t.name.clone(),
            max_stacks: t.max_stacks,
        }
    }
}

/// A token's metadata; its secret is only ever in `CreatedToken`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenItem {
    pub id: i64,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&TokenInfo> for TokenItem {
    fn from(t: &TokenInfo) -> Self {
        Self {
            id: t.id,
            name: t.name.clone(),
            created_at: time(t.created_at),
        }
    }
}

/// `GET /api/v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub ok: bool,
    pub team: TeamInfo,
    pub token: TokenItem,
}

impl From<&Principal> for Whoami {
    fn from(p: &Principal) -> Self {
        Self {
            ok: true,
            team: (&p.team).into(),
            token: (&p.token).into(),
        }
    }
}

/// `GET /api/v1/tokens`: the team's live tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub ok: bool,
    pub items: Vec<TokenItem>,
}

/// `POST /api/v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenRequest {
    /// 1-64 printable characters (surrounding spaces are trimmed).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$",
        example = "ci"
    )]
    pub name: String,
}

/// `POST /api/v1/tokens` 201: the token's secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub ok: bool,
    pub id: i64,
    pub name: String,
    pub token: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// `DELETE /api/v1/tokens/:id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedToken {
    pub ok: bool,
    pub id: i64,
    /// Always `true`.
    pub revoked: bool,
}
