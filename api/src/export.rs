//! Order exports: one row per order line, the same columns in every format.
//!
//! [`COLUMNS`] is the one place that names the columns and says what each row holds
//! in them; the CSV writer renders every cell as text, the Excel writer keeps numbers
//! numeric and times as date cells. Both page through `Query::ListOrders` with the
//! list's filters and stop at [`EXPORT_ROWS_MAX`] rows, at an order boundary.
//!
//! The Excel workbook is written on a blocking thread, in `rust_xlsxwriter`'s constant
//! memory mode (rows go to a temporary file as they are written, not into a cell
//! table), fed one page of orders at a time through a channel of
//! [`XLSX_PAGES_IN_FLIGHT`] pages: what it holds is a page or two of orders and the
//! compressed file being built, whatever the number of rows.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use rust_xlsxwriter::{ExcelDateTime, Format, Workbook, XlsxError};
use surge_engine::limits::LIST_LIMIT_MAX;
use surge_engine::{Address, OrderFilter, OrderLineView, OrderView, Query};

use crate::auth::{Auth, Reader};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::routes::{order_filter_params, read};
use crate::state::{AppState, EXPORT_ROWS_MAX};
use crate::time::format_ms;

order_filter_params! {
    /// Filters of the exports: the list's, without paging, and `bom` for the CSV.
    pub struct ExportParams {
        /// CSV only: `true` starts the file with a UTF-8 byte-order mark (EF BB BF), so
        /// that Excel reads it as UTF-8 (Chinese names and addresses); `false` (the
        /// default): no mark.
        pub bom: Option<String>,
    }
}

order_filter_params! {
    /// Filters of the Excel export: the list's, without paging (`bom` is a CSV
    /// option, refused here as any parameter not declared).
    pub struct XlsxExportParams {}
}

/// What one row is about: an order and one of its lines. Order-level columns repeat
/// on each line of the order.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    pub order: &'a OrderView,
    pub line: &'a OrderLineView,
}

/// One cell, typed, so that each format can write it properly.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Text(Cow<'a, str>),
    /// Minor units or a quantity.
    Number(u64),
    /// Milliseconds since the epoch (UTC).
    Time(u64),
}

/// A column: its header and what a row holds in it.
pub struct Column {
    pub name: &'static str,
    pub value: for<'a> fn(Row<'a>) -> Cell<'a>,
}

fn text(s: &str) -> Cell<'_> {
    Cell::Text(Cow::Borrowed(s))
}

fn address_part(o: &OrderView, part: fn(&Address) -> &Option<String>) -> Cell<'_> {
    text(
        o.shipping_address
            .as_ref()
            .and_then(|a| part(a).as_deref())
            .unwrap_or(""),
    )
}

/// Every column of the exports, in order. The first thirteen are v1's; v1.1 appends
/// the rest, so that readers by position keep working.
pub const COLUMNS: &[Column] = &[
    Column {
        name: "order_id",
        value: |r| Cell::Text(Cow::Owned(r.order.id.to_string())),
    },
    Column {
        name: "order_no",
        value: |r| text(&r.order.order_no),
    },
    Column {
        name: "customer_id",
        value: |r| text(&r.order.customer_id),
    },
    Column {
        name: "status",
        value: |r| text(r.order.status.as_str()),
    },
    Column {
        name: "payment_status",
        value: |r| text(r.order.payment.status_shown().as_str()),
    },
    Column {
        name: "total",
        value: |r| Cell::Number(r.order.total),
    },
    Column {
        name: "created_at",
        value: |r| Cell::Time(r.order.created_at_ms),
    },
    Column {
        name: "updated_at",
        value: |r| Cell::Time(r.order.updated_at_ms),
    },
    Column {
        name: "cancel_reason",
        value: |r| {
            text(
                r.order
                    .cancellation
                    .as_ref()
                    .map_or("", |c| c.reason.as_str()),
            )
        },
    },
    Column {
        name: "sku",
        value: |r| text(&r.line.sku),
    },
    Column {
        name: "qty",
        value: |r| Cell::Number(r.line.qty),
    },
    Column {
        name: "unit_price",
        value: |r| Cell::Number(r.line.unit_price),
    },
    Column {
        name: "line_total",
        value: |r| Cell::Number(r.line.qty * r.line.unit_price),
    },
    Column {
        name: "channel",
        value: |r| text(&r.order.channel),
    },
    Column {
        name: "shipping_name",
        value: |r| address_part(r.order, |a| &a.name),
    },
    Column {
        name: "shipping_phone",
        value: |r| address_part(r.order, |a| &a.phone),
    },
    Column {
        name: "shipping_province",
        value: |r| address_part(r.order, |a| &a.province),
    },
    Column {
        name: "shipping_city",
        value: |r| address_part(r.order, |a| &a.city),
    },
    Column {
        name: "shipping_district",
        value: |r| address_part(r.order, |a| &a.district),
    },
    Column {
        name: "shipping_line1",
        value: |r| address_part(r.order, |a| &a.line1),
    },
    Column {
        name: "shipping_postal_code",
        value: |r| address_part(r.order, |a| &a.postal_code),
    },
    Column {
        name: "tracking_no",
        value: |r| text(&r.order.tracking_no),
    },
    Column {
        name: "cancel_note",
        value: |r| {
            text(
                r.order
                    .cancellation
                    .as_ref()
                    .map_or("", |c| c.note.as_str()),
            )
        },
    },
    Column {
        name: "paid_amount",
        value: |r| Cell::Number(r.order.payment.paid_amount),
    },
    Column {
        name: "refunded_amount",
        value: |r| Cell::Number(r.order.payment.refunded_amount),
    },
    Column {
        name: "refund_due_amount",
        value: |r| Cell::Number(r.order.payment.refund_due_amount),
    },
];

/// Pages of orders matching a filter, newest first, cut so that the rows (order
/// lines) stay within [`EXPORT_ROWS_MAX`]: an order whose lines would cross it ends
/// the export, which is then flagged as truncated.
pub struct Pager {
    filter: OrderFilter,
    cursor: Option<surge_engine::OrderId>,
    rows: usize,
    done: bool,
    truncated: bool,
}

impl Pager {
    pub fn new(filter: OrderFilter) -> Pager {
        Pager {
            filter,
            cursor: None,
            rows: 0,
            done: false,
            truncated: false,
        }
    }

    /// The next page, `None` after the last.
    pub async fn next(&mut self, st: &AppState) -> Result<Option<Vec<OrderView>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let query = Query::ListOrders {
            filter: self.filter.clone(),
            cursor: self.cursor,
            limit: LIST_LIMIT_MAX,
        };
        let page =
            read::<surge_engine::Page<surge_engine::OrderView, surge_engine::OrderId>>(st, query)
                .await?;
        let mut items = page.items;
        let mut keep = 0;
        for o in &items {
            if self.rows + o.lines.len() > EXPORT_ROWS_MAX {
                self.truncated = true;
                break;
            }
            self.rows += o.lines.len();
            keep += 1;
        }
        items.truncate(keep);
        match page.next_cursor {
            Some(next) if !self.truncated => self.cursor = Some(next),
            _ => self.done = true,
        }
        Ok(Some(items))
    }

    /// Some matching orders were left out because of the row limit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// The header that flags an export cut at the row limit.
pub const EXPORT_TRUNCATED: &str = "x-export-truncated";

/// `true` or `false` (absent or empty: `false`).
fn parse_bom(text: Option<&str>) -> Result<bool, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::validation("bom", "must be true or false")),
    }
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted. A field a
/// spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return: a note typed by a customer) is prefixed with `'`, which Excel
/// shows as text. No number the exports write starts with one of them.
pub(crate) fn csv_field(out: &mut String, field: &str) {
    let guarded;
    let field = if field.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{field}");
        guarded.as_str()
    } else {
        field
    };
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod csv_tests {
    #[test]
    fn a_field_a_spreadsheet_would_run_is_text() {
        let mut out = String::new();
        super::csv_field(&mut out, "=HYPERLINK(\"x\")");
        assert_eq!(out, "\"'=HYPERLINK(\"\"x\"\")\"");
        let mut out = String::new();
        super::csv_field(&mut out, "plain, text");
        assert_eq!(out, "\"plain, text\"");
        let mut out = String::new();
        super::csv_field(&mut out, "1999");
        assert_eq!(out, "1999");
    }
}

fn csv_header(out: &mut String) {
    for (i, column) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(column.name);
    }
    out.push_str("\r\n");
}

fn csv_row(out: &mut String, row: Row<'_>) {
    for (i, column) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match (column.value)(row) {
            Cell::Text(t) => csv_field(out, &t),
            Cell::Number(n) => out.push_str(&n.to_string()),
            Cell::Time(ms) => out.push_str(&format_ms(ms)),
        }
    }
    out.push_str("\r\n");
}

/// Pieces an export's body is handed to the connection in.
const EXPORT_PIECE_BYTES: usize = 64 << 10;

/// An export's answer: its bytes in pieces, holding the export's slot until the
/// last piece is taken (the connection asks for the next piece only once it can
/// write it, so a slow reader keeps the slot, and the memory, it pins), with its
/// `Content-Length`.
fn export_response(bytes: Vec<u8>, slot: tokio::sync::OwnedSemaphorePermit) -> Response {
    let len = bytes.len();
    let pieces = futures_util::stream::unfold(
        (axum::body::Bytes::from(bytes), Some(slot)),
        |(mut rest, slot)| async move {
            if rest.is_empty() {
                drop(slot);
                return None;
            }
            let piece = rest.split_to(rest.len().min(EXPORT_PIECE_BYTES));
            Some((Ok::<_, std::convert::Infallible>(piece), (rest, slot)))
        },
    );
    let mut response = axum::body::Body::from_stream(pieces).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// The UTF-8 byte-order mark.
const BOM: char = '\u{feff}';

#[utoipa::path(get, path = "/v1/orders/export.csv", tag = "orders",
    params(ExportParams),
    responses((status = 200, description = "CSV (RFC 4180, UTF-8, CRLF; a text cell that starts with `=`, `+`, `-` or `@` gets a leading `'`, so a spreadsheet never runs it as a formula: compare such values with the JSON API's, or use the Excel export, which keeps them as they are), a header row then one row per order line, newest order first; order-level columns (`total`, amounts, address...) repeat on each line of an order. Times are RFC 3339 UTC. At most 100,000 rows (`EXPORT_ROWS_MAX`), cut at an order boundary, with `X-Export-Truncated: true` when cut. With `bom=true` the body starts with the UTF-8 byte-order mark (EF BB BF).",
        content_type = "text/csv", body = String,
        headers(("X-Export-Truncated" = String, description = "`true` when the row limit cut the export"))),
        (status = 503, description = "`overloaded` (with `Retry-After`): 16 exports (`EXPORTS_AT_ONCE_MAX`, CSV and Excel together) are being built or sent already", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn export_csv(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    ApiQuery(p): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    let filter = p.filter()?;
    let bom = parse_bom(p.bom.as_deref())?;
    let slot = st.export_slot()?;
    let mut out = String::new();
    if bom {
        out.push(BOM);
    }
    csv_header(&mut out);
    let mut pager = Pager::new(filter);
    while let Some(page) = pager.next(&st).await? {
        for order in &page {
            for line in &order.lines {
                csv_row(&mut out, Row { order, line });
            }
        }
    }
    let mut response = export_response(out.into_bytes(), slot);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"orders.csv\""),
    );
    if pager.truncated() {
        headers.insert(EXPORT_TRUNCATED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

// ---------------------------------------------------------------- Excel

/// Pages of orders queued between the engine reads and the workbook writer.
pub const XLSX_PAGES_IN_FLIGHT: usize = 2;
/// Rows of an Excel worksheet; the export, with its header, stays below.
const XLSX_ROWS_MAX: usize = 1_048_576;
const _: () = assert!(EXPORT_ROWS_MAX < XLSX_ROWS_MAX);
/// Excel's serial number of 1970-01-01T00:00:00 (1900 date system).
const EXCEL_SERIAL_OF_UNIX_EPOCH: f64 = 25_569.0;
const MS_PER_DAY: f64 = 86_400_000.0;
/// How times show in the workbook (they are UTC, like everywhere in the API).
const XLSX_TIME_FORMAT: &str = "yyyy-mm-dd hh:mm:ss.000";

/// Excel's serial date-time (days since 1899-12-30) of a Unix time in milliseconds.
fn excel_serial(ms: u64) -> f64 {
    EXCEL_SERIAL_OF_UNIX_EPOCH + ms as f64 / MS_PER_DAY
}

/// The media type of an `.xlsx` workbook.
pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Write the workbook from the pages received until the sender is dropped.
fn write_xlsx(
    mut pages: tokio::sync::mpsc::Receiver<Vec<OrderView>>,
) -> Result<Vec<u8>, XlsxError> {
    let mut workbook = Workbook::new();
    let bold = Format::new().set_bold();
    let time = Format::new().set_num_format(XLSX_TIME_FORMAT);
    let sheet = workbook.add_worksheet_with_constant_memory()?;
    sheet.set_name("orders")?;
    // The header row stays in view while scrolling.
    sheet.set_freeze_panes(1, 0)?;
    for (col, column) in (0u16..).zip(COLUMNS) {
        let width = match column.name {
            "created_at" | "updated_at" => 24.0,
            name => (name.len() as f64 + 2.0).max(10.0),
        };
        sheet.set_column_width(col, width)?;
        sheet.write_string_with_format(0, col, column.name, &bold)?;
    }
    let mut row: u32 = 1;
    while let Some(page) = pages.blocking_recv() {
        for order in &page {
            for line in &order.lines {
                for (col, column) in (0u16..).zip(COLUMNS) {
                    match (column.value)(Row { order, line }) {
                        // An empty text is a blank cell.
                        Cell::Text(t) if t.is_empty() => {}
                        Cell::Text(t) => {
                            sheet.write_string(row, col, t.as_ref())?;
                        }
                        // Exact up to 2^53, far above any amount or quantity here.
                        Cell::Number(n) => {
                            sheet.write_number(row, col, n as f64)?;
                        }
                        Cell::Time(ms) => {
                            let at = ExcelDateTime::from_serial_datetime(excel_serial(ms))?;
                            sheet.write_datetime_with_format(row, col, &at, &time)?;
                        }
                    }
                }
                row += 1;
            }
        }
    }
    workbook.save_to_buffer()
}

#[utoipa::path(get, path = "/v1/orders/export.xlsx", tag = "orders",
    params(XlsxExportParams),
    responses(
        (status = 200, description = "An Excel workbook (sheet `orders`): a bold header row, frozen, then one row per order line, newest order first, with the CSV's columns. Amounts and quantities are numeric cells; `created_at` and `updated_at` are date cells (UTC, format `yyyy-mm-dd hh:mm:ss.000`); empty texts are blank cells. Memory stays bounded (the sheet is streamed to a temporary file). At most 100,000 rows besides the header (`EXPORT_ROWS_MAX`, as the CSV), cut at an order boundary, with `X-Export-Truncated: true` when cut. `bom` is refused (400, an unknown parameter here): it is a CSV option.",
            content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", body = Vec<u8>,
            headers(("X-Export-Truncated" = String, description = "`true` when the row limit cut the export"))),
        (status = 500, description = "`internal`: the workbook could not be written (e.g. no writable temporary directory)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (with `Retry-After`): 16 exports (`EXPORTS_AT_ONCE_MAX`, CSV and Excel together) are being built or sent already", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn export_xlsx(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    ApiQuery(p): ApiQuery<XlsxExportParams>,
) -> Result<Response, ApiError> {
    let filter = p.filter()?;
    let slot = st.export_slot()?;
    let (pages, received) = tokio::sync::mpsc::channel(XLSX_PAGES_IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || write_xlsx(received));
    let mut pager = Pager::new(filter);
    let paged = async {
        while let Some(page) = pager.next(&st).await? {
            if pages.send(page).await.is_err() {
                // The writer stopped on an error, reported below.
                break;
            }
        }
        Ok::<(), ApiError>(())
    }
    .await;
    drop(pages);
    let written = writer.await;
    paged?;
    let bytes = match written {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "writing an xlsx export failed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the workbook could not be written",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "the xlsx export writer panicked");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ));
        }
    };
    let mut response = export_response(bytes, slot);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(XLSX_CONTENT_TYPE),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"orders.xlsx\""),
    );
    if pager.truncated() {
        headers.insert(EXPORT_TRUNCATED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_unique_and_v1_comes_first() {
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let v1 = "order_id,order_no,customer_id,status,payment_status,total,created_at,updated_at,cancel_reason,sku,qty,unit_price,line_total";
        assert!(names.join(",").starts_with(v1), "{names:?}");
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut out = String::new();
        csv_field(&mut out, "plain");
        out.push('|');
        csv_field(&mut out, "a,b \"c\"");
        assert_eq!(out, "plain|\"a,b \"\"c\"\"\"");
    }

    #[test]
    fn excel_serials() {
        assert_eq!(excel_serial(0), 25_569.0);
        // 2026-11-30T12:00:00Z is serial 46_356.5.
        assert_eq!(excel_serial(1_796_040_000_000), 46_356.5);
    }

    #[test]
    fn bom_is_a_flag() {
        assert!(!parse_bom(None).unwrap());
        assert!(!parse_bom(Some("")).unwrap());
        assert!(parse_bom(Some("true")).unwrap());
        assert!(parse_bom(Some("yes")).is_err());
        assert_eq!(BOM.to_string().as_bytes(), [0xEF, 0xBB, 0xBF]);
    }
}
