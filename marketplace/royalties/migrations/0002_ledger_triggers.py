"""On PostgreSQL the database itself guards the ledger: rows are never updated or deleted, and a
transaction whose entries do not sum to zero cannot be committed. Other databases rely on the code."""

from django.db import migrations

LEDGER_TABLES = ("royalties_transaction", "royalties_entry", "royalties_allocationline")

CREATE = [
    """
    CREATE OR REPLACE FUNCTION royalties_refuse_change() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'ledger rows are immutable: % on % refused; post a reversing transaction instead',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
    END
    $$ LANGUAGE plpgsql
    """,
    *(
        f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION royalties_refuse_change()"
        for table in LEDGER_TABLES
    ),
    """
    CREATE OR REPLACE FUNCTION royalties_check_balanced() RETURNS trigger AS $$
    DECLARE
        total bigint;
    BEGIN
        SELECT COALESCE(SUM(amount_cents), 0) INTO total FROM royalties_entry WHERE transaction_id = NEW.transaction_id;
        IF total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % does not balance: its entries sum to % cents',
                NEW.transaction_id, total USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END
    $$ LANGUAGE plpgsql
    """,
    # Checked at commit, once all of a transaction's entries are in.
    "CREATE CONSTRAINT TRIGGER royalties_entry_balanced AFTER INSERT ON royalties_entry "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION royalties_check_balanced()",
]

DROP = [
    "DROP TRIGGER IF EXISTS royalties_entry_balanced ON royalties_entry",
    "DROP FUNCTION IF EXISTS royalties_check_balanced()",
    *(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}" for table in LEDGER_TABLES),
    "DROP FUNCTION IF EXISTS royalties_refuse_change()",
]


def _execute(schema_editor, statements):
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in statements:
        schema_editor.execute(statement, params=None)


def create_triggers(apps, schema_editor):
    _execute(schema_editor, CREATE)


def drop_triggers(apps, schema_editor):
    _execute(schema_editor, DROP)


class Migration(migrations.Migration):
    dependencies = [("royalties", "0001_initial")]

    operations = [migrations.RunPython(create_triggers, drop_triggers, elidable=False)]
