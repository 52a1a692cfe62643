<?php
/**
 * Plugin Name: cloverwoo companion
 * Description: Atomic, exactly-once stock changes for the cloverwoo daemon (Clover POS <-> WooCommerce sync).
 * Version:     1.0.0
 * Requires PHP: 7.4
 * License:     MIT
 *
 * Install: copy this one file into wp-content/mu-plugins/ (create the directory if it is missing).
 * Nothing else: no activation, no settings page, no other file. Remove the file to uninstall; the
 * table {prefix}cloverwoo_writes it created may then be dropped.
 *
 * Why it exists. WooCommerce's REST API changes stock with `inventory_delta`, which reads the stock in
 * PHP, adds the delta and saves the sum. A checkout decrements the stock in SQL
 * (`meta_value = meta_value - n`), so a checkout that lands inside such a request is overwritten: the
 * shop then sells a unit it does not have, and nobody can see it afterwards. This plugin applies each
 * change through the path checkouts use (`wc_update_product_stock` with increase/decrease), so
 * concurrent checkouts and these changes all add up.
 *
 * Exactly once. Each change carries a write id chosen by the daemon. The id is recorded in the same
 * database transaction as the stock change, so after a crash either both are there or neither; a
 * retry of an id that was applied changes nothing and answers what the first attempt answered. A
 * retry is therefore always safe: after a timeout, a dropped connection or a proxy's 503.
 *
 * Routes (namespace wc-cloverwoo/v1, so WooCommerce's REST API keys authenticate them, Basic over
 * HTTPS and OAuth 1.0a, exactly as for /wc/v3):
 *
 *   GET  /wp-json/wc-cloverwoo/v1/status    versions, the webhook delivery mode, the write-id table
 *   POST /wp-json/wc-cloverwoo/v1/stock     {"changes": [{"write_id", "product_id", "delta"}, ...]}
 *   POST /wp-json/wc-cloverwoo/v1/settings  {"sync_webhooks": bool, "write_ids_kept_days": int}
 *
 * Permissions: the key needs read (GET) or write (POST) permission, as for /wc/v3, and its user the
 * `edit_products` capability (Shop Manager, Administrator); the settings need `manage_woocommerce`.
 *
 * After each change the product is saved as a checkout saves it: stock status, caches, transients,
 * date_modified, and WooCommerce's own product.updated webhook (so the daemon hears its own echo).
 *
 * PHP 7.4 or later; WooCommerce 3.6 or later; no other dependency.
 */

defined( 'ABSPATH' ) || exit;

if ( ! defined( 'CLOVERWOO_COMPANION_VERSION' ) ) {
	define( 'CLOVERWOO_COMPANION_VERSION', '1.0.0' );
}

final class Cloverwoo_Companion {

	const REST_NAMESPACE = 'wc-cloverwoo/v1';
	const MAX_CHANGES    = 100;
	const SCHEMA_VERSION = '1';
	// Options (autoloaded, so reading them costs no query).
	const OPT_SCHEMA       = 'cloverwoo_companion_schema';
	const OPT_SYNC         = 'cloverwoo_companion_sync_webhooks';
	const OPT_KEEP_DAYS    = 'cloverwoo_companion_write_ids_kept_days';
	const OPT_LAST_CLEANUP = 'cloverwoo_companion_last_cleanup';
	const DEFAULT_KEEP_DAYS = 30;
	const CLEANUP_EVERY_S   = 3600;
	const CLEANUP_ROWS      = 5000; // per cleanup, so one request never deletes millions of rows at once
	const DEADLOCK_TRIES    = 3;

	public static function boot() {
		add_action( 'rest_api_init', array( __CLASS__, 'register_routes' ) );
		// Synchronous webhook delivery, when the merchant (or the daemon) switched it on: WooCommerce then
		// sends product.updated inside the request that changed the product, not up to a minute later.
		add_filter( 'woocommerce_webhook_deliver_async', array( __CLASS__, 'deliver_async' ), 10, 1 );
	}

	public static function deliver_async( $async ) {
		return 'yes' === get_option( self::OPT_SYNC, 'no' ) ? false : $async;
	}

	public static function table() {
		global $wpdb;
		return $wpdb->prefix . 'cloverwoo_writes';
	}

	// ------------------------------------------------------------------ routes

	public static function register_routes() {
		register_rest_route(
			self::REST_NAMESPACE,
			'/status',
			array(
				'methods'             => 'GET',
				'callback'            => array( __CLASS__, 'route_status' ),
				'permission_callback' => array( __CLASS__, 'can_edit_products' ),
			)
		);
		register_rest_route(
			self::REST_NAMESPACE,
			'/stock',
			array(
				'methods'             => 'POST',
				'callback'            => array( __CLASS__, 'route_stock' ),
				'permission_callback' => array( __CLASS__, 'can_edit_products' ),
			)
		);
		register_rest_route(
			self::REST_NAMESPACE,
			'/settings',
			array(
				'methods'             => 'POST',
				'callback'            => array( __CLASS__, 'route_settings' ),
				'permission_callback' => array( __CLASS__, 'can_manage_woocommerce' ),
			)
		);
	}

	public static function can_edit_products() {
		return self::allowed( 'edit_products' );
	}

	public static function can_manage_woocommerce() {
		return self::allowed( 'manage_woocommerce' );
	}

	private static function allowed( $capability ) {
		if ( ! function_exists( 'WC' ) ) {
			return new WP_Error( 'cloverwoo_no_woocommerce', 'WooCommerce is not active.', array( 'status' => 503 ) );
		}
		if ( ! is_user_logged_in() ) {
			return new WP_Error( 'woocommerce_rest_cannot_view', 'Sorry, you cannot list resources.', array( 'status' => rest_authorization_required_code() ) );
		}
		if ( ! current_user_can( $capability ) ) {
			return new WP_Error( 'cloverwoo_forbidden', "The API key's user lacks the {$capability} capability.", array( 'status' => 403 ) );
		}
		return true;
	}

	public static function route_status( $request ) {
		global $wpdb;
		$engine = $wpdb->get_var(
			$wpdb->prepare(
				'SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s',
				$wpdb->postmeta
			)
		);
		return rest_ensure_response(
			array(
				'companion'              => CLOVERWOO_COMPANION_VERSION,
				'woocommerce'            => WC()->version,
				'wordpress'              => get_bloginfo( 'version' ),
				'php'                    => PHP_VERSION,
				'sync_webhooks'          => self::effective_sync_webhooks(),
				'sync_webhooks_setting'  => 'yes' === get_option( self::OPT_SYNC, 'no' ),
				'write_ids_kept_days'    => self::keep_days(),
				'max_changes'            => self::MAX_CHANGES,
				// A stock change and its write id are one transaction only when the meta table is
				// transactional (InnoDB); on MyISAM a crash between the two can lose the id.
				'transactional'          => is_string( $engine ) && 0 === strcasecmp( $engine, 'InnoDB' ),
				'manage_stock'           => 'yes' === get_option( 'woocommerce_manage_stock' ),
			)
		);
	}

	/** Whether WooCommerce will deliver webhooks synchronously, other plugins' filters included. */
	private static function effective_sync_webhooks() {
		try {
			$webhook = class_exists( 'WC_Webhook' ) ? new WC_Webhook() : null;
			return false === apply_filters( 'woocommerce_webhook_deliver_async', true, $webhook, 0 );
		} catch ( Throwable $e ) {
			return null; // a filter that cannot take a blank webhook: unknown
		}
	}

	private static function keep_days() {
		$days = (int) get_option( self::OPT_KEEP_DAYS, self::DEFAULT_KEEP_DAYS );
		return $days >= 1 ? $days : self::DEFAULT_KEEP_DAYS;
	}

	public static function route_settings( $request ) {
		$body = $request->get_json_params();
		if ( ! is_array( $body ) || array() === $body ) {
			return self::bad_request( 'the body must be a JSON object with sync_webhooks and/or write_ids_kept_days' );
		}
		$unknown = array_diff( array_keys( $body ), array( 'sync_webhooks', 'write_ids_kept_days' ) );
		if ( $unknown ) {
			return self::bad_request( 'unknown setting(s): ' . implode( ', ', $unknown ) );
		}
		// Validate everything before changing anything.
		if ( array_key_exists( 'sync_webhooks', $body ) && ! is_bool( $body['sync_webhooks'] ) ) {
			return self::bad_request( 'sync_webhooks must be true or false' );
		}
		if ( array_key_exists( 'write_ids_kept_days', $body ) ) {
			$days = $body['write_ids_kept_days'];
			if ( ! is_int( $days ) || $days < 1 || $days > 3650 ) {
				return self::bad_request( 'write_ids_kept_days must be a whole number of days from 1 to 3650' );
			}
		}
		if ( array_key_exists( 'sync_webhooks', $body ) ) {
			update_option( self::OPT_SYNC, $body['sync_webhooks'] ? 'yes' : 'no', true );
		}
		if ( array_key_exists( 'write_ids_kept_days', $body ) ) {
			update_option( self::OPT_KEEP_DAYS, (int) $body['write_ids_kept_days'], true );
		}
		return self::route_status( $request );
	}

	private static function bad_request( $message ) {
		return new WP_Error( 'rest_invalid_param', $message, array( 'status' => 400 ) );
	}

	// ------------------------------------------------------------------ stock

	public static function route_stock( $request ) {
		$body    = $request->get_json_params();
		$changes = is_array( $body ) && isset( $body['changes'] ) ? $body['changes'] : null;
		if ( ! is_array( $changes ) || ( array() !== $changes && array_keys( $changes ) !== range( 0, count( $changes ) - 1 ) ) ) {
			return self::bad_request( 'the body must be {"changes": [{"write_id": "...", "product_id": 123, "delta": -1}, ...]}' );
		}
		if ( count( $changes ) > self::MAX_CHANGES ) {
			return new WP_Error(
				'woocommerce_rest_request_entity_too_large',
				sprintf( 'Unable to accept more than %d changes for this request.', self::MAX_CHANGES ),
				array( 'status' => 413 )
			);
		}
		$ready = self::ensure_table();
		if ( is_wp_error( $ready ) ) {
			return $ready;
		}
		$results = array();
		foreach ( $changes as $change ) {
			$results[] = self::apply_one( $change );
		}
		self::maybe_clean_up();
		return rest_ensure_response( array( 'results' => $results ) );
	}

	/** One change: validated, then applied with its write id in one transaction, then the product saved. */
	private static function apply_one( $change ) {
		$write_id   = is_array( $change ) && isset( $change['write_id'] ) ? $change['write_id'] : null;
		$product_id = is_array( $change ) && isset( $change['product_id'] ) ? $change['product_id'] : null;
		$out        = array(
			'write_id'   => is_string( $write_id ) ? $write_id : null,
			'product_id' => is_int( $product_id ) ? $product_id : null,
		);
		if ( ! is_array( $change ) ) {
			return self::item_error( $out, 'cloverwoo_invalid_change', 'each change must be an object {write_id, product_id, delta}' );
		}
		if ( ! is_string( $write_id ) || ! preg_match( '/^[A-Za-z0-9._:\-]{1,64}$/', $write_id ) ) {
			return self::item_error( $out, 'cloverwoo_invalid_write_id', 'write_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -' );
		}
		if ( ! is_int( $product_id ) || $product_id <= 0 ) {
			return self::item_error( $out, 'cloverwoo_invalid_product_id', 'product_id must be a positive whole number (a product or variation id)' );
		}
		$delta = array_key_exists( 'delta', $change ) ? $change['delta'] : null;
		if ( is_float( $delta ) && is_finite( $delta ) && floor( $delta ) === $delta && abs( $delta ) < 1e15 ) {
			$delta = (int) $delta; // 2.0 is the whole number 2
		}
		if ( ! is_int( $delta ) ) {
			$why = ( is_float( $delta ) ) ? 'delta must be a whole number: WooCommerce stock is an integer' : 'delta must be a number';
			return self::item_error( $out, is_float( $delta ) ? 'cloverwoo_decimal_delta' : 'cloverwoo_invalid_delta', $why );
		}
		if ( 0 === $delta ) {
			return self::item_error( $out, 'cloverwoo_zero_delta', 'delta must not be 0 (a no-op write still fires product.updated)' );
		}

		for ( $try = 1; ; $try++ ) {
			$result = self::apply_in_transaction( $write_id, $product_id, $delta );
			if ( 'retry' !== $result || $try >= self::DEADLOCK_TRIES ) {
				break;
			}
		}
		if ( 'retry' === $result ) {
			return self::item_error( $out, 'cloverwoo_db_busy', 'the database kept reporting a deadlock; nothing was applied, retry the same write id' );
		}
		if ( isset( $result['error'] ) ) {
			return self::item_error( $out, $result['error'][0], $result['error'][1] );
		}
		if ( ! $result['saved'] ) {
			self::after_change( (int) $result['stock_product_id'], $write_id );
		}
		return array(
			'write_id'         => $write_id,
			'product_id'       => $product_id,
			'ok'               => true,
			'new'              => $result['new'],
			'delta'            => $delta,
			'stock'            => $result['stock'],
			'stock_product_id' => (int) $result['stock_product_id'],
		);
	}

	private static function item_error( $out, $code, $message ) {
		return $out + array(
			'ok'    => false,
			'error' => array(
				'code'    => $code,
				'message' => $message,
			),
		);
	}

	/**
	 * The write id and the stock change, one transaction. Returns 'retry' after a deadlock (rolled back).
	 *
	 * Locks: the write-id row first (a concurrent request with the same id waits here and then sees it
	 * committed), then the product's _stock meta row (a checkout's UPDATE waits for our commit, so neither
	 * overwrites the other: both are SQL increments).
	 */
	private static function apply_in_transaction( $write_id, $product_id, $delta ) {
		global $wpdb;
		$table = self::table();
		$wpdb->query( 'START TRANSACTION' );
		$inserted = $wpdb->query(
			$wpdb->prepare(
				"INSERT IGNORE INTO {$table} (write_id, product_id, delta, created_gmt) VALUES (%s, %d, %d, UTC_TIMESTAMP())",
				$write_id,
				$product_id,
				$delta
			)
		);
		if ( false === $inserted ) {
			$wpdb->query( 'ROLLBACK' );
			delete_option( self::OPT_SCHEMA ); // the table may have been dropped: the next request creates it
			return array( 'error' => array( 'cloverwoo_db_error', 'could not record the write id; nothing was applied' ) );
		}
		if ( 0 === (int) $inserted ) {
			// Seen before: a locking read gives the committed row even if our snapshot is older.
			$row = $wpdb->get_row(
				$wpdb->prepare( "SELECT product_id, delta, stock, stock_product_id, saved FROM {$table} WHERE write_id = %s FOR UPDATE", $write_id ),
				ARRAY_A
			);
			$wpdb->query( 'COMMIT' );
			if ( ! $row ) {
				return 'retry'; // removed in between (cleanup); try again as new
			}
			if ( (int) $row['product_id'] !== $product_id || (int) $row['delta'] !== $delta ) {
				return array(
					'error' => array(
						'cloverwoo_write_id_reused',
						sprintf( 'write id already used for product %d with delta %d', (int) $row['product_id'], (int) $row['delta'] ),
					),
				);
			}
			return array(
				'new'              => false,
				'stock'            => self::number( $row['stock'] ),
				'stock_product_id' => (int) $row['stock_product_id'],
				'saved'            => '1' === (string) $row['saved'],
			);
		}

		$product = wc_get_product( $product_id );
		if ( ! $product ) {
			return self::rollback_with( 'cloverwoo_unknown_product', sprintf( 'no product or variation with id %d', $product_id ) );
		}
		if ( 'trash' === $product->get_status() ) {
			return self::rollback_with( 'cloverwoo_product_trashed', sprintf( 'product %d is in the trash', $product_id ) );
		}
		if ( ! $product->managing_stock() ) {
			return self::rollback_with( 'cloverwoo_stock_not_managed', sprintf( 'product %d does not manage stock (or stock management is off in WooCommerce)', $product_id ) );
		}
		$stock_id = (int) $product->get_stock_managed_by_id();
		// The checkout path: UPDATE ... SET meta_value = meta_value +/- n. Saved after the commit (below),
		// so that webhooks and other hooks see the committed stock and no hook runs while we hold the lock.
		wc_update_product_stock( $product, abs( $delta ), $delta > 0 ? 'increase' : 'decrease', true );
		if ( self::deadlocked() ) {
			$wpdb->query( 'ROLLBACK' );
			return 'retry';
		}
		// Our UPDATE holds the row lock: this locking read is exactly the stock our change produced.
		$raw = $wpdb->get_var(
			$wpdb->prepare( "SELECT meta_value FROM {$wpdb->postmeta} WHERE post_id = %d AND meta_key = '_stock' FOR UPDATE", $stock_id )
		);
		$stock = self::number( $raw );
		$done  = $wpdb->query(
			$wpdb->prepare(
				"UPDATE {$table} SET stock = %s, stock_product_id = %d WHERE write_id = %s",
				null === $stock ? '' : (string) $stock,
				$stock_id,
				$write_id
			)
		);
		if ( false === $done || self::deadlocked() ) {
			$wpdb->query( 'ROLLBACK' );
			return 'retry';
		}
		if ( false === $wpdb->query( 'COMMIT' ) ) {
			$wpdb->query( 'ROLLBACK' );
			return 'retry';
		}
		return array(
			'new'              => true,
			'stock'            => $stock,
			'stock_product_id' => $stock_id,
			'saved'            => false,
		);
	}

	private static function rollback_with( $code, $message ) {
		global $wpdb;
		$wpdb->query( 'ROLLBACK' ); // the write id is not kept: a later retry may succeed once fixed
		return array( 'error' => array( $code, $message ) );
	}

	private static function deadlocked() {
		global $wpdb;
		$error = (string) $wpdb->last_error;
		return '' !== $error && ( false !== stripos( $error, 'deadlock' ) || false !== stripos( $error, 'lock wait timeout' ) );
	}

	private static function number( $raw ) {
		if ( null === $raw || '' === $raw || ! is_numeric( $raw ) ) {
			return null;
		}
		return wc_stock_amount( $raw );
	}

	/**
	 * What a checkout's save does after its SQL update: caches dropped (they may have been refilled with
	 * the old figure while our transaction was open), then a save of a fresh object, which sets the stock
	 * status, bumps date_modified, clears transients and fires product.updated. Marked done on the write id,
	 * so a retry after a crash between the commit and here finishes it.
	 */
	private static function after_change( $stock_id, $write_id ) {
		global $wpdb;
		wp_cache_delete( $stock_id, 'post_meta' );
		wp_cache_delete( 'lookup_table', 'object_' . $stock_id );
		clean_post_cache( $stock_id );
		if ( function_exists( 'wc_delete_product_transients' ) ) {
			wc_delete_product_transients( $stock_id );
		}
		$fresh = wc_get_product( $stock_id );
		if ( $fresh ) {
			$fresh->save();
		}
		$wpdb->query( $wpdb->prepare( 'UPDATE ' . self::table() . ' SET saved = 1 WHERE write_id = %s', $write_id ) );
	}

	// ------------------------------------------------------------------ the write-id table

	/** Creates the table on first use (CREATE TABLE commits implicitly, so never inside a transaction). */
	private static function ensure_table() {
		global $wpdb;
		if ( self::SCHEMA_VERSION === get_option( self::OPT_SCHEMA ) ) {
			return true;
		}
		$table   = self::table();
		$charset = $wpdb->get_charset_collate();
		$ok      = $wpdb->query(
			"CREATE TABLE IF NOT EXISTS {$table} (
				write_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
				product_id BIGINT UNSIGNED NOT NULL,
				delta BIGINT NOT NULL,
				stock VARCHAR(32) NULL,
				stock_product_id BIGINT UNSIGNED NULL,
				saved TINYINT(1) NOT NULL DEFAULT 0,
				created_gmt DATETIME NOT NULL,
				PRIMARY KEY  (write_id),
				KEY created_gmt (created_gmt)
			) ENGINE=InnoDB {$charset}"
		);
		if ( false === $ok ) {
			return new WP_Error( 'cloverwoo_db_error', 'could not create the write-id table ' . $table, array( 'status' => 500 ) );
		}
		update_option( self::OPT_SCHEMA, self::SCHEMA_VERSION, true );
		return true;
	}

	/** Write ids older than the kept days go, at most once an hour and a bounded number at a time. */
	private static function maybe_clean_up() {
		global $wpdb;
		$last = (int) get_option( self::OPT_LAST_CLEANUP, 0 );
		if ( time() - $last < self::CLEANUP_EVERY_S ) {
			return;
		}
		update_option( self::OPT_LAST_CLEANUP, time(), true );
		$wpdb->query(
			$wpdb->prepare(
				'DELETE FROM ' . self::table() . ' WHERE created_gmt < UTC_TIMESTAMP() - INTERVAL %d DAY LIMIT %d',
				self::keep_days(),
				self::CLEANUP_ROWS
			)
		);
	}
}

Cloverwoo_Companion::boot();
