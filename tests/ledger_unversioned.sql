BEGIN TRANSACTION;
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, who TEXT NOT NULL,
    device TEXT, action TEXT NOT NULL, detail TEXT NOT NULL);
INSERT INTO "audit" VALUES(1,1773000000.0,'operator',NULL,'owner','token issued for owner alice');
INSERT INTO "audit" VALUES(2,1773000000.0,'operator','bm-old01','assign','owner: alice');
INSERT INTO "audit" VALUES(3,1773000000.0,'owner:alice','bm-old01','rules','ordering paused, lead_days=4');
CREATE TABLE boot_anchor (
    device TEXT NOT NULL, boot INTEGER NOT NULL, epoch_ms INTEGER NOT NULL,
    PRIMARY KEY (device, boot)) WITHOUT ROWID;
INSERT INTO "boot_anchor" VALUES('bm-old01',2,1772999935000);
CREATE TABLE closed_months (
    device TEXT NOT NULL, month TEXT NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (device, month)) WITHOUT ROWID;
CREATE TABLE counters (
    device TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, field)) WITHOUT ROWID;
INSERT INTO "counters" VALUES('bm-old01','brews.espresso',5);
INSERT INTO "counters" VALUES('bm-old01','brews.lungo',2);
INSERT INTO "counters" VALUES('bm-old01','brews_total',7);
INSERT INTO "counters" VALUES('bm-old01','filters',1);
CREATE TABLE day_usage (
    device TEXT NOT NULL, day INTEGER NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, day, field)) WITHOUT ROWID;
INSERT INTO "day_usage" VALUES('bm-old01',20519,'brews.espresso',3);
INSERT INTO "day_usage" VALUES('bm-old01',20520,'brews.espresso',2);
INSERT INTO "day_usage" VALUES('bm-old01',20520,'brews.lungo',2);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    created REAL NOT NULL,
    last_seq INTEGER,            -- highest seq accepted
    last_seen REAL,              -- server time of the last accepted report
    reports INTEGER NOT NULL DEFAULT 0,
    fw TEXT, boot INTEGER, uptime_ms INTEGER, clock INTEGER,   -- from the newest report
    max_boot INTEGER NOT NULL DEFAULT 0,
    desired_version INTEGER NOT NULL DEFAULT 0,
    desired_settings TEXT NOT NULL DEFAULT '{}',
    applied_version INTEGER,
    rejected_version INTEGER,
    rejected_reason TEXT,
    plan TEXT,
    conflict_seq INTEGER         -- the highest seq when a report last got 409 (lost state?)
, key_id TEXT, old_key TEXT, old_key_id TEXT, old_until REAL, plans TEXT, closed_through TEXT);
INSERT INTO "devices" VALUES('bm-old01','abababababababababababababababababababababababababababababababab',1773000000.0,7,1773000000.0,1,'0.1.0',2,5000,1772999940,2,1,'{"lead_days": 4, "orders_month": 0}',0,NULL,NULL,'{"kind": "per_brew", "currency": "EUR", "start": null, "price_per_brew_cents": 35}',NULL,NULL,NULL,NULL,NULL,'[{"kind": "per_brew", "currency": "EUR", "start": null, "price_per_brew_cents": 35}]','2026-02-01');
CREATE TABLE events (
    device TEXT NOT NULL, id INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
    seq INTEGER NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, id)) WITHOUT ROWID;
INSERT INTO "events" VALUES('bm-old01',1,'service','{"at":3,"id":1,"kind":"service"}',7,1773000000.0);
CREATE TABLE flags (
    device TEXT NOT NULL, kind TEXT NOT NULL, field TEXT NOT NULL,
    count INTEGER NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    detail TEXT NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (device, kind, field)) WITHOUT ROWID;
CREATE TABLE fold_place (
    device TEXT NOT NULL, fold INTEGER NOT NULL, day INTEGER NOT NULL,
    PRIMARY KEY (device, fold)) WITHOUT ROWID;
CREATE TABLE fold_usage (
    device TEXT NOT NULL, fold INTEGER NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (device, fold, field)) WITHOUT ROWID;
CREATE TABLE gap_usage (
    device TEXT NOT NULL, day INTEGER NOT NULL, brews INTEGER NOT NULL,
    PRIMARY KEY (device, day)) WITHOUT ROWID;
CREATE TABLE loose_place (
    device TEXT NOT NULL, boot INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    arrived_day INTEGER NOT NULL, day INTEGER, estimated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, boot, at_ms)) WITHOUT ROWID;
CREATE TABLE loose_usage (
    device TEXT NOT NULL, boot INTEGER NOT NULL, at_ms INTEGER NOT NULL, field TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (device, boot, at_ms, field)) WITHOUT ROWID;
CREATE TABLE orders (
    device TEXT NOT NULL, id TEXT NOT NULL, item TEXT NOT NULL, cycle INTEGER NOT NULL,
    ask INTEGER NOT NULL, status TEXT NOT NULL, requested_at REAL NOT NULL, placed_at REAL,
    declined_at REAL, ship_at REAL, deliver_at REAL,
    reason TEXT,                 -- why the cloud declined it (the owner's rules, the catalogue)
    PRIMARY KEY (device, id)) WITHOUT ROWID;
CREATE TABLE owner_devices (
    device TEXT PRIMARY KEY, owner TEXT NOT NULL);
INSERT INTO "owner_devices" VALUES('bm-old01','alice');
CREATE TABLE owners (
    name TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL);
INSERT INTO "owners" VALUES('alice','a3867766601a3032c6723b6da1ef9b3628a83c48ea57f0451624958dc6ec41ff',1773000000.0);
CREATE TABLE paused (
    device TEXT PRIMARY KEY, orders_month INTEGER NOT NULL);
INSERT INTO "paused" VALUES('bm-old01',6);
CREATE TABLE refills (
    device TEXT NOT NULL, item TEXT NOT NULL, cycle INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (device, item)) WITHOUT ROWID;
CREATE TABLE reports (
    device TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, received REAL NOT NULL,
    PRIMARY KEY (device, seq)) WITHOUT ROWID;
INSERT INTO "reports" VALUES('bm-old01',7,X'2238EDEFE146A689C260BB1B8852E55F2B02FEE71C3F45CE7AB6C404585BDFFB',1773000000.0);
CREATE TABLE supplies (
    device TEXT NOT NULL, item TEXT NOT NULL, field TEXT NOT NULL, value INTEGER,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device, item, field)) WITHOUT ROWID;
INSERT INTO "supplies" VALUES('bm-old01','coffee','cycle',4,7);
INSERT INTO "supplies" VALUES('bm-old01','coffee','days',6,7);
INSERT INTO "supplies" VALUES('bm-old01','coffee','pct',40,7);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('audit',3);
COMMIT;
