#!/usr/bin/env python3
"""Build the corrupt-input corpus of tests/bad_data.rs (arrow-rs `bad_data` style).

Run from anywhere:  python3 tests/bad_data/make_corpus.py

Every file is derived from the good data root fixtures/golden/pricing_and_kinds/data, so a
test can drop it in place of its good twin and the only thing wrong is the corruption.
The outputs are committed; the Rust tests never run Python. Re-running this script must
leave `git status` clean (pyarrow's `created_by` string aside, the output is deterministic).
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GOOD = REPO / "fixtures" / "golden" / "pricing_and_kinds" / "data"
GOOD_USAGE = GOOD / "usage" / "date=2026-11-01" / "part-0.parquet"
GOOD_ALLOCATIONS = GOOD / "allocations" / "part-0.parquet"
GOOD_DEBITS = GOOD / "debits" / "date=2026-11" / "part-0.parquet"
GOOD_BOOK = GOOD / "pricebook.toml"


def write_parquet(name: str, table: pa.Table) -> None:
    pq.write_table(table, HERE / name, compression="none", store_schema=True)


def write_bytes(name: str, data: bytes) -> None:
    (HERE / name).write_bytes(data)


def write_text(name: str, text: str) -> None:
    (HERE / name).write_text(text, encoding="utf-8")


def replace_column(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    return table.set_column(index, pa.field(name, array.type), array)


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, f"{old!r} not found in the good price book"
    return text.replace(old, new, 1)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def non_utf8_corpus() -> None:
    # One account_id with a byte that is not UTF-8 (0xff), written as a string column (a
    # binary array viewed as strings: pyarrow does not check, as some exporters do not).
    usage = pq.read_table(GOOD_USAGE)
    i = usage.schema.get_field_index("account_id")
    values = [v.encode() for v in usage.column(i).to_pylist()]
    values[0] = values[0] + b"\xff"
    column = pa.array(values, pa.binary()).view(pa.string())
    write_parquet("usage_non_utf8_account.parquet", usage.set_column(i, "account_id", column))


def with_non_utf8(table: pa.Table, name: str) -> pa.Table:
    # The column's first value with a 0xff byte appended, as non_utf8_corpus does (its
    # nulls, if any, stay null).
    i = table.schema.get_field_index(name)
    values = [None if v is None else v.encode() for v in table.column(i).to_pylist()]
    assert values[0] is not None, f"{name}'s first value is null"
    values[0] = values[0] + b"\xff"
    return table.set_column(i, name, pa.array(values, pa.binary()).view(pa.string()))


def non_utf8_other_datasets_corpus() -> None:
    # The same byte in the ledger, the allocations and the grants (one grant row, the good
    # data root has no grants).
    debits = pq.read_table(GOOD_DEBITS)
    write_parquet("debits_non_utf8_entry_id.parquet", with_non_utf8(debits, "entry_id"))
    allocations = pq.read_table(GOOD_ALLOCATIONS)
    write_parquet("allocations_non_utf8_plan_id.parquet", with_non_utf8(allocations, "plan_id"))
    grants = pa.table(
        {
            "grant_id": pa.array([b"g-1\xff"], pa.binary()).view(pa.string()),
            "account_id": pa.array(["acct-1"], pa.string()),
            "kind": pa.array(["promo"], pa.string()),
            "credits": pa.array([10], pa.decimal128(18, 3)),
            "effective_at": pa.array([0], pa.timestamp("us", tz="UTC")),
            "expires_at": pa.array([None], pa.timestamp("us", tz="UTC")),
            "priority": pa.array([None], pa.int32()),
        }
    )
    write_parquet("grants_non_utf8_grant_id.parquet", grants)


def parquet_corpus() -> None:
    usage = pq.read_table(GOOD_USAGE)
    allocations = pq.read_table(GOOD_ALLOCATIONS)
    good_bytes = GOOD_USAGE.read_bytes()
    assert good_bytes[:4] == b"PAR1" and good_bytes[-4:] == b"PAR1"

    # Physical corruption.
    # A valid file cut short: the last 100 bytes (tail of the footer, its length and the
    # closing magic) are gone, as after an interrupted upload.
    write_bytes("usage_truncated_footer.parquet", good_bytes[:-100])
    # The leading magic PAR1 overwritten; the footer is intact.
    write_bytes("usage_bad_magic.parquet", b"XXXX" + good_bytes[4:])
    write_bytes("usage_empty.parquet", b"")
    write_text(
        "usage_text.parquet",
        "event_id,account_id,product,action,model,quantity,status,occurred_at\n"
        "e-1,acct-1,studio,prompt_to_video,veo-3,4.2,succeeded,2026-11-02T10:00:00Z\n",
    )

    # Damage the readers only see once they decode a row group.
    meta = pq.ParquetFile(GOOD_USAGE).metadata.row_group(0)
    # The last 40 bytes of the `quantity` chunk's compressed page overwritten with 0xFF.
    quantity = meta.column(usage.schema.get_field_index("quantity"))
    end = quantity.data_page_offset + quantity.total_compressed_size
    damaged = bytearray(good_bytes)
    damaged[end - 40 : end] = b"\xff" * 40
    write_bytes("usage_corrupt_page.parquet", bytes(damaged))
    # The footer's total_compressed_size of the `action` chunk made negative (one flipped
    # bit of its zigzag varint); everything else intact.
    action = meta.column(usage.schema.get_field_index("action"))
    old = b"\x16" + varint(zigzag(action.total_uncompressed_size))
    old += b"\x16" + varint(zigzag(action.total_compressed_size))
    new = old[: -len(varint(zigzag(action.total_compressed_size)))]
    new += varint(zigzag(-action.total_compressed_size))
    assert len(new) == len(old) and good_bytes.count(old) == 1
    write_bytes("usage_negative_chunk_size.parquet", good_bytes.replace(old, new))
    # The footer's first byte (the thrift header of its `version` field) made 0x0F, a field
    # type thrift does not have: magic bytes and length intact, the footer undecodable.
    footer_length = int.from_bytes(good_bytes[-8:-4], "little")
    footer_start = len(good_bytes) - 8 - footer_length
    bad_footer = bytearray(good_bytes)
    bad_footer[footer_start] = 0x0F
    write_bytes("usage_undecodable_footer.parquet", bytes(bad_footer))
    # Written with page checksums (a CRC-32 in each page header), one bit of the first
    # account id in its data page flipped: the page still decodes (plain, uncompressed, no
    # statistics before the values), so only its checksum shows the damage; unchecked, the
    # row is read with another account.
    checked_path = HERE / "usage_page_checksum.parquet"
    pq.write_table(
        usage,
        checked_path,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
        write_page_checksum=True,
        store_schema=True,
    )
    checked = bytearray(checked_path.read_bytes())
    first_account = usage["account_id"][0].as_py().encode()
    at = checked.find(first_account)
    assert at > 0
    checked[at + len(first_account) - 1] ^= 1
    write_bytes("usage_page_checksum.parquet", bytes(checked))

    # Wrong schema.
    write_parquet("usage_no_event_id.parquet", usage.drop_columns(["event_id"]))
    # A second `event_id` column (other ids) after the first: which one is the data?
    write_parquet(
        "usage_two_event_id_columns.parquet",
        usage.append_column(
            "event_id", pc.binary_join_element_wise(usage["event_id"], "-other", "")
        ),
    )
    write_parquet(
        "usage_quantity_float32.parquet",
        replace_column(usage, "quantity", pc.cast(usage["quantity"], pa.float32())),
    )
    occurred = pc.strftime(usage["occurred_at"], format="%Y-%m-%dT%H:%M:%SZ")
    write_parquet(
        "usage_occurred_at_string.parquet",
        replace_column(usage, "occurred_at", occurred),
    )
    write_parquet(
        "usage_quantity_string.parquet",
        replace_column(usage, "quantity", pc.cast(usage["quantity"], pa.string())),
    )
    # included_credits INT64 200 written as the DATE 1970-01-01 + 200 days.
    as_date = pc.cast(pc.cast(allocations["included_credits"], pa.int32()), pa.date32())
    write_parquet(
        "allocations_included_credits_date.parquet",
        replace_column(allocations, "included_credits", as_date),
    )

    # Positive control: the nullable `model` column absent altogether. Must succeed.
    write_parquet("usage_without_model_ok.parquet", usage.drop_columns(["model"]))


def pricebook_corpus() -> None:
    book = GOOD_BOOK.read_text(encoding="utf-8")
    write_text("pricebook_no_currency.toml", replace_once(book, 'currency = "USD"\n', ""))
    write_text(
        "pricebook_currency_lowercase.toml",
        replace_once(book, 'currency = "USD"', 'currency = "usd"'),
    )
    # Three capital letters, but not an ISO 4217 code (USD mistyped).
    write_text(
        "pricebook_currency_unknown.toml",
        replace_once(book, 'currency = "USD"', 'currency = "UDS"'),
    )
    # An ISO 4217 code without a minor unit (gold).
    write_text(
        "pricebook_currency_no_minor_unit.toml",
        replace_once(book, 'currency = "USD"', 'currency = "XAU"'),
    )
    # The veo-3 rate repeated with another credits_per_unit but the same effective_from.
    write_text(
        "pricebook_duplicate_rate.toml",
        book
        + "\n# Oops: the same key and effective_from again.\n"
        "[[rates]]\n"
        'product = "studio"\n'
        'action = "prompt_to_video"\n'
        'model = "veo-3"\n'
        'unit = "second"\n'
        'credits_per_unit = "9"\n'
        "effective_from = 2026-01-01T00:00:00Z\n",
    )
    write_text(
        "pricebook_increment_zero.toml",
        replace_once(book, 'increment = "4"', 'increment = "0"'),
    )
    # A rate that prices every event past what a credit amount holds (10^15 credits or
    # more): by its minimum, and by one increment (increment × credits_per_unit).
    write_text(
        "pricebook_minimum_past_credits.toml",
        replace_once(book, 'minimum = "5"', 'minimum = "999999999999999999"'),
    )
    write_text(
        "pricebook_increment_past_credits.toml",
        replace_once(book, 'increment = "4"', 'increment = "1000000000000000"'),
    )
    write_text(
        "pricebook_price_too_precise.toml",
        replace_once(book, 'price = "9.99"', 'price = "9.999"'),
    )
    # One digit past the 28 places a price book decimal may have (trailing zeros aside).
    write_text(
        "pricebook_rate_too_many_digits.toml",
        replace_once(book, 'credits_per_unit = "14"', 'credits_per_unit = "0.00000000000000000000000000001"'),
    )
    # A missing closing quote: TOML syntax error on line 12.
    write_text(
        "pricebook_syntax_error.toml",
        replace_once(book, 'name = "Pro"', 'name = "Pro'),
    )
    # The first rate headed [rates] (one table) instead of [[rates]] (one of many).
    write_text(
        "pricebook_rates_single_brackets.toml",
        replace_once(book, "[[rates]]", "[rates]"),
    )
    # The veo-3 rate (the third) without its credits_per_unit.
    write_text(
        "pricebook_rate_missing_key.toml",
        replace_once(book, 'credits_per_unit = "8"\nincrement = "4"\n', 'increment = "4"\n'),
    )
    write_text(
        "pricebook_unknown_overage.toml",
        replace_once(book, 'rollover_cap = "100"\noverage = "block"', 'rollover_cap = "100"\noverage = "charge"'),
    )
    # An overage table with another key than price_per_credit.
    write_text(
        "pricebook_overage_table_wrong_key.toml",
        replace_once(book, 'overage = { price_per_credit = "0.05" }', 'overage = { price = "0.05" }'),
    )


if __name__ == "__main__":
    parquet_corpus()
    non_utf8_corpus()
    non_utf8_other_datasets_corpus()
    pricebook_corpus()
