-- read_values: the values a claimed continuation reads, as revision 0004 creates it.
-- {schema} stands for the FlowStone schema (a validated, quoted identifier); the migration
-- substitutes it and runs this file as one statement. Released files never change: a new
-- version of the function is a new file, created by a new revision.
CREATE FUNCTION {schema}.read_values(p_table regclass, p_locations text[])
RETURNS TABLE (location text, format text, value_json text, data bytea)
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF p_table IS NULL OR cardinality(p_locations) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT v.location, v.format, v.value_json::text, v.data FROM %s AS v '
        'WHERE v.location = ANY($1)', p_table)
    USING p_locations;
END
$fn$
