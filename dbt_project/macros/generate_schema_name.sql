{#-
    Schemas are exactly staging, intermediate and marts (the folder's +schema),
    not dbt's default <target_schema>_<custom_schema>: other stages and BI read
    these names, so they must not depend on who runs dbt.
-#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
