<?xml version="1.0" encoding="UTF-8"?>
<!-- The /iati handler's answer: one IATI activities file holding the iati_xml of every matching
     activity, as the IATI Datastore's /iati answered. XSLT 1.0, so Solr's built-in (JDK) processor
     runs it; the file's generated-datetime is the request time, taken from the "datetime" pseudo
     field that the handler's fl adds to every document (absent when nothing matched). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" media-type="text/xml" encoding="UTF-8" indent="yes"/>

  <xsl:template match="/">
    <iati-activities version="2.03">
      <xsl:variable name="now" select="response/result/doc[1]/date[@name='datetime']"/>
      <xsl:if test="$now">
        <xsl:attribute name="generated-datetime">
          <xsl:value-of select="$now"/>
        </xsl:attribute>
      </xsl:if>
      <xsl:apply-templates select="response/result/doc"/>
    </iati-activities>
  </xsl:template>

  <!-- iati_xml is stored as text: written out as markup, not escaped. -->
  <xsl:template match="doc">
    <xsl:value-of select="str[@name='iati_xml']" disable-output-escaping="yes"/>
  </xsl:template>
</xsl:stylesheet>
