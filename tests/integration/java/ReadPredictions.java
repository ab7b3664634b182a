// A consumer of the predictions topics with nothing but Kafka's client, Apache Avro and
// the schema registry's HTTP API: no streamscore code. Each record's writer schema is
// fetched by the id in its wire-format header (GET <registry>/schemas/ids/<id>).
// Usage: ReadPredictions <bootstrap> <registry url> <expected records> <topic>...
// Prints one JSON line per record: topic, decoded fields, headers (in order).
import com.fasterxml.jackson.databind.ObjectMapper;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class ReadPredictions {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0];
    String registry = args[1];
    int expected = Integer.parseInt(args[2]);
    List<String> topics = Arrays.asList(args).subList(3, args.length);
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("group.id", "java-reader-" + UUID.randomUUID());
    props.put("auto.offset.reset", "earliest");
    props.put("isolation.level", "read_committed");
    props.put("enable.auto.commit", "false");
    HttpClient http = HttpClient.newHttpClient();
    ObjectMapper json = new ObjectMapper();
    Map<Integer, Schema> schemas = new HashMap<>();
    int n = 0;
    long deadline = System.currentTimeMillis() + 120_000;
    try (KafkaConsumer<byte[], byte[]> consumer =
        new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      consumer.subscribe(topics);
      while (n < expected && System.currentTimeMillis() < deadline) {
        for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
          byte[] value = r.value();
          ByteBuffer buf = ByteBuffer.wrap(value);
          if (buf.get() != 0) {
            throw new IllegalStateException("not the wire format: magic byte " + value[0]);
          }
          int id = buf.getInt();
          Schema schema = schemas.get(id);
          if (schema == null) {
            HttpRequest req = HttpRequest.newBuilder(URI.create(registry + "/schemas/ids/" + id)).build();
            HttpResponse<String> resp = http.send(req, HttpResponse.BodyHandlers.ofString());
            if (resp.statusCode() != 200) {
              throw new IllegalStateException("registry answered " + resp.statusCode() + " for id " + id);
            }
            schema = new Schema.Parser().parse(json.readTree(resp.body()).get("schema").asText());
            schemas.put(id, schema);
          }
          BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null);
          GenericRecord rec = new GenericDatumReader<GenericRecord>(schema).read(null, decoder);
          Map<String, Object> out = new LinkedHashMap<>();
          out.put("topic", r.topic());
          out.put("schema_id", id);
          for (String f : new String[] {"event_id", "model_name", "role", "label"}) {
            Object v = rec.get(f);
            out.put(f, v == null ? null : v.toString());
          }
          out.put("model_version", rec.get("model_version"));
          out.put("score", rec.get("score"));
          GenericRecord detail = (GenericRecord) rec.get("detail");
          out.put("n_probabilities", ((List<?>) detail.get("probabilities")).size());
          List<List<String>> headers = new ArrayList<>();
          for (Header h : r.headers()) {
            headers.add(Arrays.asList(h.key(), new String(h.value(), StandardCharsets.UTF_8)));
          }
          out.put("headers", headers);
          System.out.println(json.writeValueAsString(out));
          n++;
        }
      }
    }
    System.err.println("read " + n + " records");
  }
}
