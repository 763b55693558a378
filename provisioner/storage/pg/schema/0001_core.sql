-- The AEIMS data in PostgreSQL: one table per JSON entity, two derived membership tables, and
-- the data layer's own tables (phase_state, outbox, legacy_ids). 27 tables.
--
-- Conventions (every entity table):
-- * The primary key is the AEIMS identity as the JSON holds it (text: `cust_flirts001`,
--   `op_001`, a login, a domain). There are no UUIDs the JSON never had (REPORT bug 4), so a
--   row and its JSON record always share one id.
-- * Typed columns hold the fields worth querying: timestamptz for every time (parsed from the
--   five AEIMS formats; naive `Y-m-d H:i:s` taken as UTC), numeric(12,2) for money and credits,
--   boolean for flags. `ip` and `registration_ip` are text: the files hold "unknown" and "::1".
-- * `extra` holds every field with no column, plus, under `__orig__`, the original of any value
--   its column cannot give back with the same type and form (an int 0 in a numeric column, a
--   naive timestamp in a column whose usual form is ISO), and under `__absent__` the columns
--   whose field the record lacks. So a row gives back its record exactly (the round-trip rule).
-- * `placement` is where the record sits in its JSON file(s); `content_hash` makes a re-upsert
--   of an unchanged record a no-op; `stored_at` is when the row last changed.
-- * No foreign keys between entities: the files have none (verifications point to operators
--   that do not exist, reservations to unknown user ids), and dual-write order is not
--   guaranteed. Only the derived membership rows reference their owner.
-- * Logins are looked up by THE rule shared with the JSON side: ASCII whitespace trimmed, ASCII
--   letters lowercased (lower(btrim(x, E' \t\n\r\x0b\x0c') COLLATE "C")); the lookup indexes
--   are on exactly that expression, so find_by_login is an index probe per rule step.

-- ---------------------------------------------------------------------------------------------
-- Sites and domains
-- ---------------------------------------------------------------------------------------------

CREATE TABLE sites (
    site_id             text          PRIMARY KEY,
    domain              text,
    name                text,
    description         text,
    template            text,
    active              boolean,
    created_at          timestamptz,
    categories          text[],
    theme               jsonb,
    features            jsonb,
    per_minute_rate     numeric(12,2),
    minimum_purchase    numeric(12,2),
    currency            text,
    operator_commission numeric(7,4),
    total_customers     integer,
    total_operators     integer,
    active_operators    integer,
    total_calls         integer,
    total_revenue       numeric(12,2),
    extra               jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement           jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash        text          NOT NULL,
    stored_at           timestamptz   NOT NULL DEFAULT now()
);
-- Not unique: two records claiming one domain are a finding for validation, not a reason to
-- refuse the backfill.
CREATE INDEX sites_lower_domain_idx ON sites (lower(domain));
COMMENT ON TABLE sites IS 'data/sites.json: one row per site record (site_id = domain with . -> _)';

CREATE TABLE domains (
    domain               text          PRIMARY KEY,
    theme                text,
    description          text,
    services             text[],
    status               text,
    ssl_status           text,
    ssl_expires          timestamptz,
    created_at           timestamptz,
    last_updated         timestamptz,
    monthly_revenue      numeric(12,2),
    monthly_calls        integer,
    monthly_messages     integer,
    uptime_percentage    numeric(7,4),
    operators_count      integer,
    cross_site_operators integer,
    active_users         integer,
    extra                jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement            jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash         text          NOT NULL,
    stored_at            timestamptz   NOT NULL DEFAULT now()
);
COMMENT ON TABLE domains IS 'data/domains.json: the marketing domain registry (theme is a name here)';

-- ---------------------------------------------------------------------------------------------
-- People: customers, operators, accounts, and the memberships derived from their records
-- ---------------------------------------------------------------------------------------------

CREATE TABLE customers (
    customer_id     text          PRIMARY KEY,
    username        text,
    email           text,
    password_hash   text,
    site_domain     text,
    sites           text[],
    registration_ip text,
    active          boolean,
    verified        boolean,
    created_at      timestamptz,
    display_name    text,
    age_verified    boolean,
    credits         numeric(12,2),
    total_spent     numeric(12,2),
    last_activity   timestamptz,
    extra           jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement       jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash    text          NOT NULL,
    stored_at       timestamptz   NOT NULL DEFAULT now()
);
-- The login lookup (username, then email) is two index probes; the key as second column gives a
-- deterministic first match when a login is duplicated.
CREATE INDEX customers_login_username_idx ON customers ((lower(btrim(username, E' \t\n\r\x0b\x0c') COLLATE "C")), customer_id);
CREATE INDEX customers_login_email_idx ON customers ((lower(btrim(email, E' \t\n\r\x0b\x0c') COLLATE "C")), customer_id);
COMMENT ON COLUMN customers.credits IS 'billing.credits (REPORT bug 5: never the absent top-level credits)';

CREATE TABLE customer_sites (
    customer_id text    NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    domain      text    NOT NULL CHECK (domain <> ''),
    listed      boolean NOT NULL,
    home        boolean NOT NULL,
    PRIMARY KEY (customer_id, domain),
    CHECK (listed OR home)
);
CREATE INDEX customer_sites_domain_idx ON customer_sites (domain);
COMMENT ON TABLE customer_sites IS
    'Derived from each customer record, rewritten with it: one row per domain in its sites list '
    '(listed) or equal to its site_domain (home). customers.sites holds domains, not site_ids.';
COMMENT ON COLUMN customer_sites.domain IS
    'The domain as text, deliberately not a foreign key to sites: the records name domains that '
    'have no sites row (demo.example.com, nine operator domains), a site can be onboarded after '
    'its customers, and sites are keyed by site_id, not by domain. Dropping or rejecting those '
    'memberships would lose data the PHP application still uses.';

CREATE TABLE operators (
    operator_id   text          PRIMARY KEY,
    username      text,
    name          text,
    email         text,
    password_hash text,
    status        text,
    phone         text,
    verified      boolean,
    created_at    timestamptz,
    services      text[],
    domains       jsonb,
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);
-- Operators are found by id (exact, trimmed), then username, then email.
CREATE INDEX operators_login_id_idx ON operators ((btrim(operator_id, E' \t\n\r\x0b\x0c')));
CREATE INDEX operators_login_username_idx ON operators ((lower(btrim(username, E' \t\n\r\x0b\x0c') COLLATE "C")), operator_id);
CREATE INDEX operators_login_email_idx ON operators ((lower(btrim(email, E' \t\n\r\x0b\x0c') COLLATE "C")), operator_id);
COMMENT ON TABLE operators IS
    'data/operators.json and agents/data/operators.json merged: operator_id is the record''s id '
    '(op_001), the file keys ("0", "nycdiamond") are in placement. username is text; an int '
    'username (0, 1, 2) is kept as its string form and restored from extra.__orig__.';

CREATE TABLE operator_sites (
    operator_id  text        NOT NULL REFERENCES operators (operator_id) ON DELETE CASCADE,
    domain       text        NOT NULL CHECK (domain <> ''),
    role         text,
    active       boolean,
    joined       timestamptz,
    display_name text,
    bio          text,
    PRIMARY KEY (operator_id, domain)
);
CREATE INDEX operator_sites_domain_idx ON operator_sites (domain);
COMMENT ON TABLE operator_sites IS
    'Derived from each operator record''s domains map (role, active, joined) and its per-domain '
    'profile.display_names / profile.bios, rewritten with the record.';
COMMENT ON COLUMN operator_sites.domain IS
    'The domain as text, not a foreign key to sites: nine of the domains operators serve have no '
    'sites row; the membership is kept so nothing the JSON says is lost.';

CREATE TABLE accounts (
    login         text          PRIMARY KEY,
    account_id    text,
    name          text,
    account_type  text,
    password_hash text,
    email         text,
    status        text,
    created_at    timestamptz,
    permissions   text[],
    domains       text[],
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX accounts_login_login_idx ON accounts ((lower(btrim(login, E' \t\n\r\x0b\x0c') COLLATE "C")));
CREATE INDEX accounts_login_email_idx ON accounts ((lower(btrim(email, E' \t\n\r\x0b\x0c') COLLATE "C")), login);
COMMENT ON COLUMN accounts.password_hash IS 'the record''s "password" field, a bcrypt hash';

CREATE TABLE account_locks (
    login         text          PRIMARY KEY,
    attempts      integer,
    first_attempt timestamptz,
    last_attempt  timestamptz,
    locked_at     timestamptz,
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Chat rooms and messaging
-- ---------------------------------------------------------------------------------------------

CREATE TABLE chat_rooms (
    room_id         text          PRIMARY KEY,
    operator_id     text,
    room_name       text,
    description     text,
    pin_protected   boolean,
    pin_code        text,
    entry_fee       numeric(12,2),
    per_minute_rate numeric(12,2),
    created_at      timestamptz,
    status          text,
    max_users       integer,
    current_users   jsonb,
    extra           jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement       jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash    text          NOT NULL,
    stored_at       timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX chat_rooms_operator_idx ON chat_rooms (operator_id);

CREATE TABLE room_messages (
    message_id   text          PRIMARY KEY,
    room_id      text,
    sender_id    text,
    sender_type  text,
    content      text,
    sent_at      timestamptz,
    read_by      jsonb,
    extra        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement    jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash text          NOT NULL,
    stored_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX room_messages_room_idx ON room_messages (room_id, sent_at);

CREATE TABLE room_invites (
    invite_id    text          PRIMARY KEY,
    operator_id  text,
    customer_id  text,
    room_id      text,
    free_minutes integer,
    message      text,
    status       text,
    created_at   timestamptz,
    expires_at   timestamptz,
    responded_at timestamptz,
    used_at      timestamptz,
    minutes_used integer,
    extra        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement    jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash text          NOT NULL,
    stored_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX room_invites_customer_idx ON room_invites (customer_id);
CREATE INDEX room_invites_operator_idx ON room_invites (operator_id);

CREATE TABLE conversations (
    conversation_id       text          PRIMARY KEY,
    customer_id           text,
    operator_id           text,
    site_domain           text,
    status                text,
    created_at            timestamptz,
    last_activity         timestamptz,
    ended_at              timestamptz,
    message_count         integer,
    total_customer_paid   numeric(12,2),
    total_operator_earned numeric(12,2),
    extra                 jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement             jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash          text          NOT NULL,
    stored_at             timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX conversations_customer_idx ON conversations (customer_id);
CREATE INDEX conversations_operator_idx ON conversations (operator_id);

-- The hottest write path: kept to three indexes.
CREATE TABLE messages (
    message_id      text          PRIMARY KEY,
    conversation_id text,
    sender_id       text,
    sender_type     text,
    content         text,
    sent_at         timestamptz,
    cost            numeric(12,2),
    extra           jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement       jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash    text          NOT NULL,
    stored_at       timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, sent_at);
CREATE INDEX messages_sent_at_idx ON messages (sent_at);

-- ---------------------------------------------------------------------------------------------
-- Content marketplace, favorites, notifications, money, requests
-- ---------------------------------------------------------------------------------------------

-- Keyed by content_id, the id DataLayer gives every item it saves; ContentMarketplaceManager's
-- own item_id is kept beside it.
CREATE TABLE content_items (
    content_id    text          PRIMARY KEY,
    item_id       text,
    operator_id   text,
    content_type  text,
    title         text,
    description   text,
    price         numeric(12,2),
    file_url      text,
    thumbnail_url text,
    tags          text[],
    status        text,
    created_at    timestamptz,
    updated_at    timestamptz,
    views         integer,
    purchases     integer,
    earnings      numeric(12,2),
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX content_items_operator_idx ON content_items (operator_id);

CREATE TABLE content_purchases (
    purchase_id    text          PRIMARY KEY,
    item_id        text,
    customer_id    text,
    operator_id    text,
    price_paid     numeric(12,2),
    purchased_at   timestamptz,
    access_granted boolean,
    extra          jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement      jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash   text          NOT NULL,
    stored_at      timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX content_purchases_customer_idx ON content_purchases (customer_id);
CREATE INDEX content_purchases_item_idx ON content_purchases (item_id);

-- data/favorites.json is {customer_id: [operator_id, ...]}: one record per customer.
CREATE TABLE favorites (
    customer_id  text          PRIMARY KEY,
    operator_ids text[],
    extra        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement    jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash text          NOT NULL,
    stored_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX favorites_operator_ids_idx ON favorites USING gin (operator_ids);

CREATE TABLE notifications (
    notification_id   text          PRIMARY KEY,
    user_id           text,
    notification_type text,
    title             text,
    message           text,
    link              text,
    read              boolean,
    created_at        timestamptz,
    extra             jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash      text          NOT NULL,
    stored_at         timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at);

CREATE TABLE transactions (
    transaction_id   text          PRIMARY KEY,
    customer_id      text,
    operator_id      text,
    site_id          text,
    transaction_type text,
    amount           numeric(12,2),
    currency         text,
    status           text,
    description      text,
    created_at       timestamptz,
    extra            jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash     text          NOT NULL,
    stored_at        timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX transactions_customer_idx ON transactions (customer_id, created_at);
CREATE INDEX transactions_operator_idx ON transactions (operator_id, created_at);

CREATE TABLE operator_requests (
    request_id   text          PRIMARY KEY,
    operator_id  text,
    customer_id  text,
    request_type text,
    message      text,
    duration     integer,
    price        numeric(12,2),
    status       text,
    created_at   timestamptz,
    expires_at   timestamptz,
    responded_at timestamptz,
    extra        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement    jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash text          NOT NULL,
    stored_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX operator_requests_customer_idx ON operator_requests (customer_id);
CREATE INDEX operator_requests_operator_idx ON operator_requests (operator_id);

-- ---------------------------------------------------------------------------------------------
-- Activity, verification, reservations, rate limits
-- ---------------------------------------------------------------------------------------------

CREATE TABLE customer_activity (
    activity_id   text          PRIMARY KEY,
    customer_id   text,
    activity_type text,
    action        text,
    site          text,
    ip            text,
    occurred_at   timestamptz,
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX customer_activity_customer_idx ON customer_activity (customer_id, occurred_at);
COMMENT ON COLUMN customer_activity.ip IS 'text, not inet: the file holds "unknown"';

CREATE TABLE id_verifications (
    verification_id   text          PRIMARY KEY,
    operator_id       text,
    status            text,
    verification_code text,
    documents         jsonb,
    notes             text,
    created_at        timestamptz,
    updated_at        timestamptz,
    reviewed_by       text,
    reviewed_at       timestamptz,
    extra             jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash      text          NOT NULL,
    stored_at         timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX id_verifications_operator_idx ON id_verifications (operator_id);

CREATE TABLE verification_codes (
    code         text          PRIMARY KEY,
    generated_by text,
    generated_at timestamptz,
    expires_at   timestamptz,
    used         boolean,
    used_by      text,
    used_at      timestamptz,
    notes        text,
    extra        jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement    jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash text          NOT NULL,
    stored_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX verification_codes_used_by_idx ON verification_codes (used_by);

CREATE TABLE username_reservations (
    username       text          PRIMARY KEY,
    original_site  text,
    reserved_at    timestamptz,
    reserved_sites text[],
    user_id        text,
    email          text,
    extra          jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement      jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash   text          NOT NULL,
    stored_at      timestamptz   NOT NULL DEFAULT now()
);

CREATE TABLE rate_limits (
    limit_key     text          PRIMARY KEY,
    identifier    text,
    action        text,
    attempts      integer,
    first_attempt timestamptz,
    last_attempt  timestamptz,
    blocked_until timestamptz,
    extra         jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(extra) = 'object'),
    placement     jsonb         NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(placement) = 'object'),
    content_hash  text          NOT NULL,
    stored_at     timestamptz   NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- The data layer's own tables
-- ---------------------------------------------------------------------------------------------

-- The migration phase, one row. The environment flags USE_DATABASE / USE_JSON override it.
CREATE TABLE phase_state (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    phase      text        NOT NULL CHECK (phase IN ('json_only', 'dual_write_read_json',
                                                     'dual_write_read_pg', 'pg_only')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    changed_by text        NOT NULL CHECK (changed_by <> '')
);
INSERT INTO phase_state (phase, changed_by) VALUES ('json_only', 'schema migration 0001');

-- A mirror of the data layer's durable outbox (a local file), for diagnostics only.
CREATE TABLE outbox (
    id         bigserial   PRIMARY KEY,
    entity     text        NOT NULL CHECK (entity <> ''),
    key        text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('upsert', 'delete')),
    payload    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts   integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text,
    CHECK (op = 'delete' OR payload IS NOT NULL)
);
CREATE INDEX outbox_entity_key_idx ON outbox (entity, key);

-- Ids a record was known by elsewhere (a JSON file key that differs from its id, a UUID from an
-- earlier database) mapped to its AEIMS key, so old references still resolve.
CREATE TABLE legacy_ids (
    entity    text NOT NULL CHECK (entity <> ''),
    legacy_id text NOT NULL,
    key       text NOT NULL,
    PRIMARY KEY (entity, legacy_id)
);
CREATE INDEX legacy_ids_key_idx ON legacy_ids (entity, key);
