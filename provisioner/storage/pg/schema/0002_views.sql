-- Analytics views (the plan's "advanced analytics with views").
--
-- "Per site" means per domain as the memberships name it: customers.sites and the operators'
-- domain maps hold domains, several of which have no sites row, so grouping by sites.site_id
-- would silently drop them. The site's id and name are shown where a sites row exists.
-- Domains compare lower-case (memberships store them so). Days are UTC days.

CREATE VIEW site_domains AS
    SELECT lower(domain) AS domain FROM sites WHERE domain IS NOT NULL AND domain <> ''
    UNION
    SELECT domain FROM customer_sites
    UNION
    SELECT domain FROM operator_sites;
COMMENT ON VIEW site_domains IS 'Every domain a site, a customer or an operator names';

CREATE VIEW site_summary AS
SELECT d.domain,
       s.site_id,
       s.name                                AS site_name,
       coalesce(c.customers, 0)              AS customers,
       coalesce(o.operators, 0)              AS operators,
       coalesce(o.active_operators, 0)       AS active_operators,
       coalesce(c.credits, 0)::numeric(14,2) AS credits
FROM site_domains d
LEFT JOIN LATERAL (
    SELECT site_id, name FROM sites WHERE lower(sites.domain) = d.domain ORDER BY site_id LIMIT 1
) s ON true
LEFT JOIN (
    SELECT cs.domain, count(*) AS customers, sum(cu.credits) AS credits
    FROM customer_sites cs
    JOIN customers cu USING (customer_id)
    GROUP BY cs.domain
) c ON c.domain = d.domain
LEFT JOIN (
    SELECT domain, count(*) AS operators, count(*) FILTER (WHERE active) AS active_operators
    FROM operator_sites
    GROUP BY domain
) o ON o.domain = d.domain;
COMMENT ON VIEW site_summary IS
    'Per domain: customers who list it or registered on it, operators serving it (and how many '
    'of those memberships are active), and the sum of those customers'' billing.credits';

CREATE VIEW messages_per_day AS
SELECT (sent_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages
FROM messages
WHERE sent_at IS NOT NULL
GROUP BY 1;

CREATE VIEW messages_per_site_day AS
SELECT c.site_domain AS domain, (m.sent_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages
FROM messages m
LEFT JOIN conversations c USING (conversation_id)
WHERE m.sent_at IS NOT NULL
GROUP BY 1, 2;
COMMENT ON VIEW messages_per_site_day IS 'Messages per UTC day and per their conversation''s site_domain';
